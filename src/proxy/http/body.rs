//! Bodies as the proxy handles them: streamed through, except a bounded copy kept for retries
//! and mirroring, and response bodies that report their end to the metrics.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Frame, SizeHint};

use crate::retry::MAX_REPLAY_BYTES;

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

/// A request body as the tries of a request use it.
///
/// With replay on, the first try streams the client's body upstream while keeping a copy of
/// up to [`MAX_REPLAY_BYTES`] (data and trailers): if the body ended within that bound, later
/// tries (and a mirror) send the copy. A larger body, or one still streaming when the first
/// response arrives, is never buffered whole and not retried. This works for bodies without a
/// length (gRPC) as well as for small uploads.
pub struct RequestBody {
    first: Option<ProxyBody>,
    copy: Option<Arc<Mutex<Copy>>>,
}

#[derive(Default)]
struct Copy {
    data: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    complete: bool,
    overflowed: bool,
}

impl RequestBody {
    /// A body sent once.
    pub fn streaming(body: ProxyBody) -> Self {
        Self {
            first: Some(body),
            copy: None,
        }
    }

    /// A body whose first [`MAX_REPLAY_BYTES`] are kept for more tries.
    pub fn replayable(body: ProxyBody) -> Self {
        // An empty body (most GETs) is complete from the start: a try that fails before the
        // body is ever looked at (a refused connection) can still be retried.
        let copy = Copy {
            complete: body.is_end_stream(),
            ..Copy::default()
        };
        Self {
            first: Some(body),
            copy: Some(Arc::new(Mutex::new(copy))),
        }
    }

    /// Reads a small body of known length (a `Content-Length` within [`MAX_REPLAY_BYTES`]) in
    /// full before the first try, so that every try, the first included, sends the copy: a try
    /// that fails before reading the body (a refused connection) loses nothing. Bodies without a
    /// length (gRPC, chunked streams) and large ones keep streaming.
    pub async fn read_small(&mut self) -> Result<(), BoxError> {
        let (Some(first), Some(copy)) = (&self.first, &self.copy) else {
            return Ok(());
        };
        let small = first
            .size_hint()
            .exact()
            .is_some_and(|len| len > 0 && len <= MAX_REPLAY_BYTES as u64);
        if !small {
            return Ok(());
        }
        let copy = Arc::clone(copy);
        let mut body = self.first.take().map(|first| Teeing { inner: first, copy });
        if let Some(body) = &mut body {
            while let Some(frame) = body.frame().await {
                frame?;
            }
        }
        Ok(())
    }

    /// The body for the next try: the client's stream the first time; afterwards the copy, if
    /// there is a complete one.
    pub fn take(&mut self) -> Option<ProxyBody> {
        if let Some(first) = self.first.take() {
            return Some(match &self.copy {
                Some(copy) => Teeing {
                    inner: first,
                    copy: copy.clone(),
                }
                .boxed_unsync(),
                None => first,
            });
        }
        self.replay()
    }

    /// Whether another try could send the whole body again.
    pub fn is_replayable(&self) -> bool {
        self.first.is_some() && self.copy.is_some()
            || self.copy.as_ref().is_some_and(|copy| {
                let copy = lock(copy);
                copy.complete && !copy.overflowed
            })
    }

    /// The kept copy as a body, if the client's body ended within the bound.
    pub fn replay(&self) -> Option<ProxyBody> {
        let copy = lock(self.copy.as_ref()?);
        if !copy.complete || copy.overflowed {
            return None;
        }
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = copy
            .data
            .iter()
            .cloned()
            .map(Frame::data)
            .chain(copy.trailers.clone().map(Frame::trailers))
            .map(Ok)
            .collect();
        Some(StreamBody::new(futures::stream::iter(frames)).boxed_unsync())
    }
}

fn lock(copy: &Mutex<Copy>) -> std::sync::MutexGuard<'_, Copy> {
    copy.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first try's body: passes the client's frames on and keeps a bounded copy.
struct Teeing {
    inner: ProxyBody,
    copy: Arc<Mutex<Copy>>,
}

impl Body for Teeing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let mut copy = lock(&self.copy);
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        copy.len += data.len();
                        if copy.len > MAX_REPLAY_BYTES {
                            copy.overflowed = true;
                            copy.data = Vec::new();
                        } else if !copy.overflowed {
                            copy.data.push(data.clone());
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        copy.trailers = Some(trailers.clone());
                    }
                }
                Some(Err(_)) => copy.overflowed = true,
                None => copy.complete = true,
            }
            // Senders stop polling once a body says it has ended (no trailing `None`).
            if self.inner.is_end_stream() {
                copy.complete = true;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.inner.is_end_stream();
        if ended {
            // An empty body is never polled at all.
            lock(&self.copy).complete = true;
        }
        ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(status) = crate::retry::grpc_status(trailers) {
                        self.grpc_status = Some(status);
                    }
                    // Trailers are the last frame; the sender may not poll again.
                    self.finish(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A try that fails before its body is read (a refused connection) drops the body unread.
    #[tokio::test]
    async fn an_empty_body_can_be_retried_after_a_try_that_never_read_it() {
        let mut body = RequestBody::replayable(empty());
        drop(body.take());
        assert!(body.is_replayable());
        let again = body.take().expect("the replayed copy");
        assert!(again.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn a_small_body_read_before_the_first_try_survives_a_try_that_never_read_it() {
        let mut body = RequestBody::replayable(full("payload"));
        body.read_small().await.unwrap();
        drop(body.take());
        assert!(body.is_replayable());
        let again = body.take().expect("the copy");
        assert_eq!(again.collect().await.unwrap().to_bytes(), "payload");
    }

    #[test]
    fn an_unread_body_with_content_cannot_be_replayed() {
        let mut body = RequestBody::replayable(full("payload"));
        drop(body.take());
        assert!(!body.is_replayable());
        assert!(body.take().is_none());
    }
}
