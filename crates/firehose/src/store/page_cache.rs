//! Keeps the page cache of `events.db` to a window behind its end: once a checkpoint has
//! copied pages into the file, pages further back than [`CACHED_TAIL`] are dropped from the
//! kernel's cache.
//!
//! Why: the log only appends, so at full ingest every checkpoint writes new file pages, about
//! 170 MB/s in a fan-in flood, and the kernel takes each from free memory. On virtual machines
//! whose host reclaims the guest's free memory (virtio-balloon free page reporting, common in
//! clouds), a page taken back from the host costs several times a recycled one: writing 1 GiB
//! into a new file took 2.3 s of kernel time there, against 0.6 s when the file's older pages
//! were dropped as it grew (the kernel hands out the pages freed last first). Unbounded, the
//! cache of an old log also pushes out pages that other work uses more. What stays cached is
//! the recent history that reconnecting subscribers catch up on; older reads go to the disk.
//!
//! Only pages already written and synced by the checkpoint are dropped (the kernel keeps dirty
//! ones), so nothing is lost and SQLite sees the same file either way.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

/// Bytes at the end of `events.db` left in the page cache: at 1000 events/s of 1 KiB, about
/// the last four minutes of history.
const CACHED_TAIL: u64 = 256 * 1024 * 1024;

/// The checkpointer's handle on the database file's page cache.
pub(super) struct PageCache {
    /// `events.db`, opened for reading: advice applies to the file, whichever descriptor.
    file: File,
    /// Everything before this offset was dropped once; pages read back since stay cached.
    dropped_to: u64,
    /// The tail left cached.
    cached_tail: u64,
    /// A failure was logged; later ones are not.
    failed: bool,
}

impl PageCache {
    /// Opens `db` for trimming its cache; `None` (logged) if it cannot be opened, in which
    /// case the cache is simply left to the kernel.
    pub(super) fn open(db: &Path) -> Option<PageCache> {
        PageCache::with_tail(db, CACHED_TAIL)
    }

    fn with_tail(db: &Path, cached_tail: u64) -> Option<PageCache> {
        match File::open(db) {
            Ok(file) => Some(PageCache {
                file,
                dropped_to: 0,
                cached_tail,
                failed: false,
            }),
            Err(error) => {
                tracing::debug!(path = %db.display(), %error,
                    "cannot open the event log to trim its page cache");
                None
            }
        }
    }

    /// Drops the pages between the last trim and [`CACHED_TAIL`] before the end of the file.
    /// Call after a checkpoint pass, whose sync made those pages clean.
    pub(super) fn trim(&mut self) {
        let len = match self.file.metadata() {
            Ok(metadata) => metadata.len(),
            Err(error) => return self.failed(&error),
        };
        // A file that shrank (vacuum) starts the count again.
        self.dropped_to = self.dropped_to.min(len);
        let until = len.saturating_sub(self.cached_tail);
        if until <= self.dropped_to {
            return;
        }
        let (Ok(offset), Ok(span)) = (
            i64::try_from(self.dropped_to),
            i64::try_from(until - self.dropped_to),
        ) else {
            return;
        };
        match posix_fadvise(
            &self.file,
            offset,
            span,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        ) {
            Ok(()) => self.dropped_to = until,
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&mut self, error: &dyn std::fmt::Display) {
        if !self.failed {
            tracing::debug!(%error, "cannot trim the event log's page cache; leaving it to the kernel");
        }
        self.failed = true;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn grow(path: &Path, bytes: usize) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("open for appending");
        file.write_all(&vec![7u8; bytes]).expect("append");
        file.sync_all().expect("sync");
    }

    #[test]
    fn trims_what_lies_behind_the_cached_tail_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        grow(&path, 64 * 1024);
        let mut cache = PageCache::with_tail(&path, 256 * 1024).expect("open");
        cache.trim();
        assert_eq!(
            cache.dropped_to, 0,
            "a file shorter than the tail keeps all"
        );
        grow(&path, 448 * 1024);
        cache.trim();
        assert_eq!(cache.dropped_to, 256 * 1024);
        cache.trim();
        assert_eq!(cache.dropped_to, 256 * 1024, "nothing new to drop");
        grow(&path, 32 * 1024);
        cache.trim();
        assert_eq!(cache.dropped_to, 288 * 1024, "only what the file grew by");
        assert!(!cache.failed);
        // The content is untouched: dropping cached pages only means reading them again.
        let content = std::fs::read(&path).expect("read");
        assert_eq!(content.len(), 544 * 1024);
        assert!(content.iter().all(|&b| b == 7));
    }

    #[test]
    fn a_file_that_shrank_is_counted_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.db");
        grow(&path, 512 * 1024);
        let mut cache = PageCache::with_tail(&path, 128 * 1024).expect("open");
        cache.trim();
        assert_eq!(cache.dropped_to, 384 * 1024);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(64 * 1024))
            .expect("shrink");
        cache.trim();
        assert_eq!(cache.dropped_to, 64 * 1024, "the file's end");
        grow(&path, 256 * 1024);
        cache.trim();
        assert_eq!(cache.dropped_to, 192 * 1024);
    }

    #[test]
    fn a_missing_file_leaves_the_cache_to_the_kernel() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(PageCache::open(&dir.path().join("absent.db")).is_none());
    }
}
