//! When received bytes reached the generator's host, by the kernel's receive timestamp.
//!
//! The generator serves up to a thousand subscribers on one thread. When one PUBLISH fans out
//! to all of them, the broker fills a thousand sockets within a few milliseconds, and the
//! generator then reads them one after the other: the last socket is read milliseconds after
//! its delivery arrived. That wait belongs to the generator, not to the broker, and a thousand
//! real subscribers on their own machines would not have it. With `SO_TIMESTAMPNS` the kernel
//! stamps every segment as it reaches the receiving socket, and each read reports the stamp of
//! the newest segment it returned: the latency is then measured up to the moment a delivery
//! reached its subscriber, whoever reads it when. Over loopback that stamp is taken while the
//! broker's `write` runs, so it is the moment the broker delivered.
//!
//! The stamp is `CLOCK_REALTIME`; the generator's clock is monotonic. So that a realtime clock
//! step or slew cannot skew the figures, only an *age* crosses over: how long before the read
//! the newest segment arrived, both ends read from the realtime clock within microseconds.
//! A read of several deliveries takes its newest segment's stamp for all of them, which can
//! only make the earlier ones look later, never earlier.
//!
//! Only fixed-rate runs ask for stamps ([`crate::wire::Target::stamp_arrivals`]): there latency
//! is the measurement, and a socket is read soon after each delivery.
//!
//! Depends on nix (`recvmsg`, `SO_TIMESTAMPNS`: safe wrappers, as the workspace forbids `unsafe`)
//! and tokio's sockets.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::wire::READ_CHUNK;

thread_local! {
    /// Where `recvmsg` writes before the bytes are appended to the caller's buffer: `recvmsg`
    /// needs initialised memory, and zeroing the spare capacity of every buffer before every
    /// read would cost more than this one copy. The generator runs on one thread, and the
    /// buffer is borrowed only inside a synchronous call, so one is enough.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Asks the kernel to stamp what arrives on `tcp`.
///
/// # Errors
/// The socket option cannot be set.
pub(crate) fn enable(tcp: &TcpStream) -> io::Result<()> {
    socket::setsockopt(tcp, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// Bytes appended to the buffer; 0 at the end of the stream.
    pub(crate) bytes: usize,
    /// How long before this read returned the newest of those bytes reached the socket;
    /// `None` when the kernel gave no stamp (the option is off, or not yet on: the first
    /// socket to ask turns stamping on for the host a moment later) or the clock went
    /// backwards.
    pub(crate) age: Option<Duration>,
}

impl Arrival {
    /// A read without a kernel stamp.
    pub(crate) fn unstamped(bytes: usize) -> Arrival {
        Arrival { bytes, age: None }
    }
}

/// Reads what is available on `tcp` into `buf`: with the age of the newest bytes when
/// `stamped` (the socket was [`enable`]d), straight into `buf` otherwise.
///
/// # Errors
/// The read fails.
pub(crate) async fn read(
    tcp: &TcpStream,
    buf: &mut BytesMut,
    stamped: bool,
) -> io::Result<Arrival> {
    loop {
        tcp.readable().await?;
        let attempt = if stamped {
            tcp.try_io(Interest::READABLE, || recv_once(tcp, buf))
        } else {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            tcp.try_read_buf(buf).map(Arrival::unstamped)
        };
        match attempt {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// One `recvmsg` through the scratch buffer.
fn recv_once(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<Arrival> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut control = nix::cmsg_space!(TimeSpec);
        let mut iov = [IoSliceMut::new(scratch)];
        let message = socket::recvmsg::<()>(
            tcp.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::empty(),
        )?;
        let bytes = message.bytes;
        // The bytes are read whatever the control data says: control data that did not fit
        // (MSG_CTRUNC) costs this read its stamp, not its bytes.
        let stamp = message.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|cmsg| match cmsg {
                ControlMessageOwned::ScmTimestampns(stamp) => Some(stamp),
                _ => None,
            })
        });
        buf.extend_from_slice(&scratch[..bytes]);
        Ok(Arrival {
            bytes,
            age: stamp.and_then(|stamp| age_of(stamp, SystemTime::now())),
        })
    })
}

/// How long before `now` the kernel stamp `stamp` was taken; `None` if it lies after `now`.
fn age_of(stamp: TimeSpec, now: SystemTime) -> Option<Duration> {
    let seconds = u64::try_from(stamp.tv_sec()).ok()?;
    let nanos = u32::try_from(stamp.tv_nsec()).ok()?;
    let stamped = UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))?;
    now.duration_since(stamped).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn age_is_the_distance_back_from_now() {
        let now = UNIX_EPOCH + Duration::new(1_000, 500);
        let stamp = TimeSpec::new(999, 250_000_500);
        assert_eq!(age_of(stamp, now), Some(Duration::from_millis(750)));
    }

    #[test]
    fn a_stamp_after_now_has_no_age() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(age_of(TimeSpec::new(1_001, 0), now), None);
        assert_eq!(age_of(TimeSpec::new(-1, 0), now), None);
    }

    /// Over real loopback TCP: the bytes arrive whole, and the stamp says they waited at least
    /// as long as the reader let them.
    #[tokio::test]
    async fn a_stamped_read_reports_how_long_the_bytes_waited() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let reader = TcpStream::connect(address).await.expect("connect");
        let (mut writer, _) = listener.accept().await.expect("accept");
        enable(&reader).expect("SO_TIMESTAMPNS");
        // The first socket to ask turns stamping on for the whole host from a kernel work
        // queue, a moment later: what arrives before that has no stamp.
        let mut buf = BytesMut::new();
        for _ in 0..500 {
            writer.write_all(b".").await.expect("write");
            if read(&reader, &mut buf, true)
                .await
                .expect("read")
                .age
                .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        writer.write_all(b"stamped").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = BytesMut::from(&b"kept:"[..]);
        let arrival = read(&reader, &mut buf, true).await.expect("read");

        assert_eq!(arrival.bytes, 7);
        assert_eq!(&buf[..], b"kept:stamped");
        let age = arrival.age.expect("a kernel stamp");
        assert!(age >= Duration::from_millis(45), "waited only {age:?}");
        assert!(age < Duration::from_secs(30), "waited {age:?}");

        drop(writer);
        let end = read(&reader, &mut buf, true)
            .await
            .expect("read at the end");
        assert_eq!(end.bytes, 0);
    }

    #[tokio::test]
    async fn without_the_option_there_is_no_stamp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let reader = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (mut writer, _) = listener.accept().await.expect("accept");
        writer.write_all(b"plain").await.expect("write");
        let mut buf = BytesMut::new();
        let arrival = read(&reader, &mut buf, true).await.expect("read");
        assert_eq!((arrival.bytes, arrival.age), (5, None));
        writer.write_all(b"direct").await.expect("write");
        let arrival = read(&reader, &mut buf, false).await.expect("read");
        assert_eq!((arrival.bytes, arrival.age), (6, None));
        assert_eq!(&buf[..], b"plaindirect");
    }
}
