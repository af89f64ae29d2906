//! Measuring without disturbing: a latency histogram cheap enough to record a million values a
//! second, and process CPU time and memory read from `/proc`.
//!
//! Pure code and file parsing only; the scenarios decide what to record and when.

use std::fs;
use std::io;

/// Sub-buckets per power of two, as a number of bits: 32 sub-buckets bound the error of a
/// reported percentile to about 3 %, which is finer than the noise of a shared machine.
const SUB_BITS: u32 = 5;
/// Sub-buckets per power of two.
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Buckets needed for every `u64`.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB_COUNT as usize;

/// A log-linear histogram of `u64` values (nanoseconds here): recording is a few instructions
/// and never allocates, and histograms of many connections merge by addition.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    /// Count per bucket, see [`bucket_of`].
    counts: Vec<u64>,
    /// Number of values recorded.
    total: u64,
    /// Largest value recorded (exact, not bucketed).
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

/// The bucket of `value`: values below [`SUB_COUNT`] have their own bucket; above, each power
/// of two is split into [`SUB_COUNT`] equal sub-buckets.
fn bucket_of(value: u64) -> usize {
    if value < SUB_COUNT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) & (SUB_COUNT - 1);
    ((shift + 1) as usize) * SUB_COUNT as usize + sub as usize
}

/// The largest value that falls in `bucket` (the inverse of [`bucket_of`]).
fn bucket_high(bucket: usize) -> u64 {
    let sub_count = SUB_COUNT as usize;
    if bucket < sub_count {
        return bucket as u64;
    }
    let shift = (bucket / sub_count - 1) as u32;
    let sub = (bucket % sub_count) as u64;
    let low = (SUB_COUNT | sub) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    /// Records one value.
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// Largest value recorded; 0 when empty.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value below or at which `quantile` (0.0 to 1.0) of the values lie, rounded up to its
    /// bucket's upper bound (never above the maximum); `None` when empty.
    pub(crate) fn quantile(&self, quantile: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_high(bucket).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// Latency percentiles in milliseconds, as reported.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Largest.
    pub(crate) max_ms: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds; `None` when nothing was recorded.
    pub(crate) fn from_nanos(histogram: &Histogram) -> Option<Latency> {
        let ms = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
        Some(Latency {
            p50_ms: ms(histogram.quantile(0.50)?),
            p99_ms: ms(histogram.quantile(0.99)?),
            max_ms: ms(histogram.max()),
        })
    }
}

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat` (`USER_HZ`). The kernel fixes
/// it at 100 for user space on every architecture Linux supports today, which spares a libc
/// dependency for `sysconf(_SC_CLK_TCK)`.
const USER_HZ: f64 = 100.0;

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct ProcSample {
    /// User plus system CPU time of every thread, dead or alive, in seconds.
    pub(crate) cpu_seconds: f64,
    /// Resident set size, KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set size since the process started, KiB.
    pub(crate) hwm_kib: u64,
}

/// Which process to read: `/proc/self` or `/proc/<pid>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pid {
    /// The generator itself.
    Myself,
    /// Another process (the broker).
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Myself => "/proc/self".to_string(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Reads CPU time and memory of `pid`.
///
/// # Errors
/// The process is gone or `/proc` does not say what was expected.
pub(crate) fn sample(pid: Pid) -> io::Result<ProcSample> {
    let dir = pid.dir();
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{dir}/stat: expected utime and stime after the command name, got {stat:?}"),
        )
    })?;
    let (rss_kib, hwm_kib) = parse_status_memory(&status);
    Ok(ProcSample {
        cpu_seconds: ticks as f64 / USER_HZ,
        rss_kib,
        hwm_kib,
    })
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
///
/// The command name (field 2) is in parentheses and may itself hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th field here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` and `VmHWM` of a `/proc/<pid>/status` file, in KiB (0 when absent, as for a zombie).
fn parse_status_memory(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..SUB_COUNT * 2 {
            assert_eq!(bucket_high(bucket_of(v)), v, "value {v}");
        }
    }

    #[test]
    fn every_value_lies_in_its_bucket_with_bounded_error() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            for probe in [v, v + 1, v * 3 / 2, v * 2 - 1] {
                let high = bucket_high(bucket_of(probe));
                assert!(high >= probe, "{probe} above its bucket's high {high}");
                assert!(
                    (high - probe) as f64 <= probe as f64 / SUB_COUNT as f64,
                    "{probe}: bucket high {high} too far"
                );
                assert!(bucket_of(probe) < BUCKETS);
            }
            v = v * 2 + 7;
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
        assert_eq!(bucket_high(bucket_of(u64::MAX)), u64::MAX);
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000); // 1 µs .. 10 ms
        }
        assert_eq!(h.len(), 10_000);
        let p50 = h.quantile(0.5).expect("not empty");
        let p99 = h.quantile(0.99).expect("not empty");
        assert!(
            (5_000_000..=5_000_000 + 5_000_000 / 32).contains(&p50),
            "p50 {p50}"
        );
        assert!(
            (9_900_000..=9_900_000 + 9_900_000 / 32).contains(&p99),
            "p99 {p99}"
        );
        assert_eq!(h.quantile(1.0), Some(10_000_000));
        assert_eq!(h.max(), 10_000_000);
        let p0 = h.quantile(0.0).expect("not empty");
        assert!((1000..=1000 + 1000 / 32).contains(&p0), "p0 {p0}");
    }

    #[test]
    fn a_quantile_never_exceeds_the_maximum() {
        let mut h = Histogram::default();
        h.record(1_000_001);
        assert_eq!(h.quantile(0.5), Some(1_000_001));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(Latency::from_nanos(&h), None);
    }

    #[test]
    fn merged_histograms_add_up() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in 0..100 {
            a.record(v);
            b.record(1_000_000 + v);
        }
        a.merge(&b);
        assert_eq!(a.len(), 200);
        assert_eq!(a.max(), 1_000_099);
        assert!(a.quantile(0.5).expect("not empty") < 100);
        assert!(a.quantile(0.51).expect("not empty") >= 1_000_000);
    }

    #[test]
    fn latency_in_milliseconds() {
        let mut h = Histogram::default();
        for _ in 0..99 {
            h.record(2_000_000);
        }
        h.record(40_000_000);
        let l = Latency::from_nanos(&h).expect("not empty");
        assert!((2.0..=2.07).contains(&l.p50_ms), "{l:?}");
        assert!((2.0..=2.07).contains(&l.p99_ms), "{l:?}");
        assert_eq!(l.max_ms, 40.0);
    }

    #[test]
    fn stat_line_with_a_tricky_command_name() {
        let line = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
    }

    #[test]
    fn stat_line_that_is_cut_short() {
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_memory_fields() {
        let status = "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmHWM:\t    9000 kB\n\
                      VmRSS:\t    8123 kB\nThreads:\t1\n";
        assert_eq!(parse_status_memory(status), (8123, 9000));
        assert_eq!(parse_status_memory("Name:\tzombie\n"), (0, 0));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(Pid::Myself).expect("/proc/self");
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
    }
}
