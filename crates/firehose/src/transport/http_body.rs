//! Bodies of the HTTP listener: a request body with a deadline, and a response body that
//! holds a limit's slot until it ends.
//!
//! Depends on [`super::limits`] only (to count a body that missed its deadline).
//!
//! hyper bounds how long request *headers* may take, not bodies: a client that declares a
//! megabyte and sends nothing, or a byte a second, would keep its connection and the handler
//! waiting for ever. [`DeadlineBody`] gives the whole body one deadline, counted from the end
//! of the headers, so a trickle ends too; the handler reading it gets an error
//! ([`BodyTimeout`]) and answers, and hyper closes the connection because the body was not
//! read to its end.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::limits::{HttpLimits, Reason};

/// The error a [`DeadlineBody`] ends with when its deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (http.body_timeout_secs)")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
#[derive(Debug)]
pub(crate) struct DeadlineBody {
    inner: Incoming,
    /// When the body must be complete.
    deadline: Instant,
    /// The time allowed, for the error message.
    allowed: Duration,
    /// Made the first time the body is not ready, so that requests without a body (most of
    /// them) never arm a timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Where a missed deadline is counted, and for whom.
    limits: Arc<HttpLimits>,
    client: IpAddr,
}

impl DeadlineBody {
    /// `inner`, which must be complete within `allowed` from now.
    pub(crate) fn new(
        inner: Incoming,
        allowed: Duration,
        limits: Arc<HttpLimits>,
        client: IpAddr,
    ) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Instant::now() + allowed,
            allowed,
            timer: None,
            limits,
            client,
        }
    }
}

/// Why a [`DeadlineBody`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The connection failed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The deadline passed.
    #[error(transparent)]
    Timeout(#[from] BodyTimeout),
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(BodyError::Hyper)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.limits.refused(Reason::BodyTimeout, this.client, None);
        Poll::Ready(Some(Err(BodyTimeout(this.allowed).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps `held` (a limit's slot) until the body has been sent or
/// dropped: an SSE stream holds its client's place for as long as it streams.
#[derive(Debug)]
pub(crate) struct Holding<T> {
    body: axum::body::Body,
    /// Kept for its `Drop`.
    _held: T,
}

impl<T> Holding<T> {
    /// `body`, keeping `held` alive as long as it.
    pub(crate) fn new(body: axum::body::Body, held: T) -> Holding<T> {
        Holding { body, _held: held }
    }
}

impl<T: Unpin> Body for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
