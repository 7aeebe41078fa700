//! One bounded HTTP/1.1 GET over any byte stream (a TCP connection, a port-forward): how the
//! CLI asks the control plane's debug server ([`crate::cli::debug_server`]) and how the control
//! plane scrapes a proxy's `/metrics` ([`crate::controlplane::stats`]). Answers are read up to a
//! limit, never whole, so a wrong or hostile peer cannot grow the caller's memory.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
}

/// One HTTP/1.1 GET of `path` over `stream` (a TCP connection or a port-forward); the body of
/// a successful answer, at most `limit` bytes.
pub async fn get<S>(stream: S, host: &str, path: &str, limit: usize) -> Result<Bytes, GetError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven beside the request; it ends when the answer is read.
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let answer = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = read_limited(response.into_body(), limit).await?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body).trim().to_owned();
            return Err(GetError::Status { status, body });
        }
        Ok(body)
    }
    .await;
    driver.abort();
    answer
}

/// An answer being streamed: its body, read line by line ([`Lines::next_line`]); the
/// connection is driven until this is dropped.
pub struct Lines {
    body: hyper::body::Incoming,
    buffered: bytes::BytesMut,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Lines {
    /// The next line (without its `\n`); `None` at the end. A line over `limit` bytes is
    /// refused rather than buffered.
    pub async fn next_line(&mut self, limit: usize) -> Result<Option<Bytes>, GetError> {
        loop {
            if let Some(end) = self.buffered.iter().position(|&b| b == b'\n') {
                let line = self.buffered.split_to(end + 1).freeze();
                return Ok(Some(line.slice(..end)));
            }
            if self.buffered.len() > limit {
                return Err(GetError::TooLarge(limit));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffered.extend_from_slice(data);
                    }
                }
                Some(Err(err)) => return Err(GetError::Body(err.to_string())),
                None if self.buffered.is_empty() => return Ok(None),
                None => return Ok(Some(self.buffered.split().freeze())),
            }
        }
    }
}

/// One HTTP/1.1 GET of `path` whose successful answer is streamed ([`Lines`]); an answer
/// that is not a success is read (up to `limit`) and returned as the error.
pub async fn get_lines<S>(
    stream: S,
    host: &str,
    path: &str,
    limit: usize,
) -> Result<Lines, GetError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    if !status.is_success() {
        let body = read_limited(response.into_body(), limit).await?;
        driver.abort();
        let body = String::from_utf8_lossy(&body).trim().to_owned();
        return Err(GetError::Status { status, body });
    }
    Ok(Lines {
        body: response.into_body(),
        buffered: bytes::BytesMut::new(),
        driver,
    })
}

/// A body, refused once it passes `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, GetError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(GetError::TooLarge(limit))
        }
        Err(error) => Err(GetError::Body(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer over the limit is refused, not read whole.
    #[tokio::test]
    async fn answers_are_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            axum::Router::new().route("/big", axum::routing::get(|| async { "x".repeat(5000) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let connect = || tokio::net::TcpStream::connect(addr);
        let small = get(connect().await.unwrap(), "h", "/big", 10_000)
            .await
            .unwrap();
        assert_eq!(small.len(), 5000);
        let error = get(connect().await.unwrap(), "h", "/big", 1000)
            .await
            .unwrap_err();
        assert!(matches!(error, GetError::TooLarge(1000)), "{error}");
    }
}
