//! HTTP/1 requests between proxies carried over HTTP/2.
//!
//! An HTTP/1 connection carries one request at a time, so a caller's proxy would hold one pooled
//! connection to an endpoint per request in flight, each with its own buffers, task and TLS
//! session, and the endpoint's proxy as many again. When the endpoint is meshed (reached over
//! mutual TLS) and its proxy says it can (the control plane's `http2Upgrade` on the endpoint),
//! the caller's proxy sends its HTTP/1 requests to it as HTTP/2 instead, all on one connection,
//! marked with [`ORIGINAL_PROTOCOL`]; the endpoint's proxy turns each back into the HTTP/1
//! request it was before handing it to the app. The apps see nothing of it: the client spoke
//! HTTP/1 to its proxy and the app gets HTTP/1 from its own.
//!
//! Not carried so: upgrades (WebSocket needs the HTTP/1 connection itself) and `CONNECT`.

use http::header::{HOST, HeaderName, HeaderValue, UPGRADE};
use http::request::Parts;
use http::{Method, Request, Uri, Version};

/// Marks a request the caller's proxy carried over HTTP/2: its value is the version the client
/// spoke.
pub const ORIGINAL_PROTOCOL: HeaderName = HeaderName::from_static("x-skein-orig-proto");

const HTTP_11: HeaderValue = HeaderValue::from_static("HTTP/1.1");

/// Whether an HTTP/1 request may travel over HTTP/2 to a proxy that takes such requests.
pub fn can_carry(parts: &Parts) -> bool {
    matches!(
        parts.version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    ) && parts.method != Method::CONNECT
        && !parts.headers.contains_key(UPGRADE)
}

/// The caller's side: the request goes out as HTTP/2, marked. The upstream request is HTTP/1.1
/// whatever the client spoke, as it would have been without this.
pub fn carry(parts: &mut Parts) {
    parts.version = Version::HTTP_2;
    parts.headers.insert(ORIGINAL_PROTOCOL, HTTP_11);
}

/// The endpoint's side: a carried request becomes the HTTP/1.1 request it was, in origin form
/// (the HTTP/2 authority was the endpoint's address; the client's `Host` came along as a
/// header). The mark is removed from every request, so no client can set it for the app.
pub fn restore<B>(request: &mut Request<B>) {
    let Some(original) = request.headers_mut().remove(ORIGINAL_PROTOCOL) else {
        return;
    };
    if request.version() != Version::HTTP_2 || original != HTTP_11 {
        return;
    }
    *request.version_mut() = Version::HTTP_11;
    if !request.headers().contains_key(HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        // An HTTP/1.0 client may send no `Host`; the app then sees the address it was sent to,
        // as it would have from an HTTP/1 hop.
        request.headers_mut().insert(HOST, host);
    }
    let origin_form = request
        .uri()
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |path| Uri::from(path.clone()));
    *request.uri_mut() = origin_form;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, method: Method) -> Parts {
        let mut request = Request::new(());
        *request.version_mut() = version;
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from_static("/orders?id=7");
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("orders.shop:8080"));
        request.into_parts().0
    }

    #[test]
    fn http1_requests_are_carried_but_not_upgrades_or_connect() {
        assert!(can_carry(&parts(Version::HTTP_11, Method::GET)));
        assert!(can_carry(&parts(Version::HTTP_10, Method::POST)));
        assert!(!can_carry(&parts(Version::HTTP_2, Method::GET)));
        assert!(!can_carry(&parts(Version::HTTP_11, Method::CONNECT)));
        let mut websocket = parts(Version::HTTP_11, Method::GET);
        websocket
            .headers
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!can_carry(&websocket));
    }

    /// What the endpoint's proxy receives: the carried request as hyper's HTTP/2 server gives it.
    fn received(parts: Parts, authority: &str) -> Request<()> {
        let mut request = Request::from_parts(parts, ());
        let path = request.uri().path_and_query().cloned();
        *request.uri_mut() = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(path.expect("path"))
            .build()
            .expect("uri");
        request
    }

    #[test]
    fn a_carried_request_is_restored_as_the_client_sent_it() {
        let mut sent = parts(Version::HTTP_11, Method::POST);
        carry(&mut sent);
        assert_eq!(sent.version, Version::HTTP_2);
        let mut request = received(sent, "10.0.0.5:8080");
        restore(&mut request);
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.uri(), "/orders?id=7");
        assert_eq!(request.headers()[HOST], "orders.shop:8080");
        assert!(!request.headers().contains_key(ORIGINAL_PROTOCOL));
    }

    #[test]
    fn a_request_without_host_gets_the_address_it_was_sent_to() {
        let mut sent = parts(Version::HTTP_10, Method::GET);
        sent.headers.remove(HOST);
        carry(&mut sent);
        let mut request = received(sent, "10.0.0.5:8080");
        restore(&mut request);
        assert_eq!(request.headers()[HOST], "10.0.0.5:8080");
    }

    #[test]
    fn the_mark_is_removed_but_only_honoured_on_http2() {
        // An HTTP/1 client setting the mark itself: removed, nothing else changes.
        let mut request = Request::from_parts(parts(Version::HTTP_11, Method::GET), ());
        request.headers_mut().insert(ORIGINAL_PROTOCOL, HTTP_11);
        restore(&mut request);
        assert_eq!(request.version(), Version::HTTP_11);
        assert!(!request.headers().contains_key(ORIGINAL_PROTOCOL));
        // HTTP/2 with an unknown value: stays HTTP/2.
        let mut request = received(parts(Version::HTTP_2, Method::GET), "10.0.0.5:8080");
        request
            .headers_mut()
            .insert(ORIGINAL_PROTOCOL, HeaderValue::from_static("HTTP/3"));
        restore(&mut request);
        assert_eq!(request.version(), Version::HTTP_2);
        assert!(!request.headers().contains_key(ORIGINAL_PROTOCOL));
        // HTTP/2 without the mark: untouched.
        let mut request = received(parts(Version::HTTP_2, Method::GET), "10.0.0.5:8080");
        restore(&mut request);
        assert_eq!(request.version(), Version::HTTP_2);
        assert_eq!(request.uri(), "https://10.0.0.5:8080/orders?id=7");
    }
}
