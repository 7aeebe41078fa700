//! Bodies as the proxy handles them: streamed through, except a bounded copy kept for retries
//! and mirroring, and response bodies that report their end to the metrics.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};

use crate::proxy::retry::MAX_REPLAY_BYTES;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy sends, either way.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// Boxes any body with a boxable error.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A request body that can be sent more than once, or the body itself when it cannot.
pub enum RequestBody {
    /// Small enough to keep: sent again on each try.
    Replayable(Bytes),
    /// Streamed once; the request is not retried or mirrored.
    Streaming(ProxyBody),
    /// The stream was sent.
    Used,
}

impl RequestBody {
    /// Keeps the body in memory when it is known to be at most [`MAX_REPLAY_BYTES`] (an empty
    /// body, or a `Content-Length` within the bound), so that it can be retried; larger or
    /// open-ended bodies (uploads, streaming gRPC) are streamed once, never buffered whole.
    pub async fn prepare<B>(body: B, want_replay: bool) -> Result<Self, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let small = body.is_end_stream()
            || body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_REPLAY_BYTES as u64);
        if !(want_replay && small) {
            return Ok(Self::Streaming(boxed(body)));
        }
        let collected = body.collect().await.map_err(Into::into)?;
        Ok(Self::Replayable(collected.to_bytes()))
    }

    /// The body for one try: a copy when replayable; the stream itself (only once) otherwise.
    pub fn take(&mut self) -> Option<ProxyBody> {
        match std::mem::replace(self, Self::Used) {
            Self::Replayable(bytes) => {
                let copy = full(bytes.clone());
                *self = Self::Replayable(bytes);
                Some(copy)
            }
            Self::Streaming(body) => Some(body),
            Self::Used => None,
        }
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, Self::Replayable(_))
    }

    /// A copy for a mirror, if the body can be copied.
    pub fn copy(&self) -> Option<ProxyBody> {
        match self {
            Self::Replayable(bytes) => Some(full(bytes.clone())),
            _ => None,
        }
    }
}

/// What a finished response reports: its status, its gRPC status (from headers or trailers) and
/// how long it took end to end. Called exactly once, when the body ends or is dropped.
pub trait OnResponseEnd: Send + 'static {
    fn ended(
        self: Box<Self>,
        grpc_status: Option<i32>,
        completed: bool,
        elapsed: std::time::Duration,
    );
}

/// A response body that watches for the gRPC status in trailers and reports its end.
pub struct Metered {
    inner: ProxyBody,
    started: Instant,
    grpc_status: Option<i32>,
    report: Option<Box<dyn OnResponseEnd>>,
}

impl Metered {
    pub fn new(
        inner: ProxyBody,
        started: Instant,
        grpc_status: Option<i32>,
        report: Box<dyn OnResponseEnd>,
    ) -> Self {
        Self {
            inner,
            started,
            grpc_status,
            report: Some(report),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(report) = self.report.take() {
            report.ended(self.grpc_status, completed, self.started.elapsed());
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = crate::proxy::retry::grpc_status(trailers)
                {
                    self.grpc_status = Some(status);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // An empty body may be dropped without ever being polled; it is complete all the same.
        let completed = self.inner.is_end_stream();
        self.finish(completed);
    }
}
