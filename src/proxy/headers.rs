//! Header rewriting every forwarded HTTP request needs: dropping hop-by-hop headers, the
//! request id, and trace-context propagation (W3C `traceparent` and Zipkin B3, both written so
//! apps using either tracer join the same trace). Pure logic on `http::HeaderMap`.

use std::fmt::Write as _;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Hop-by-hop headers: they describe the connection they came on, not the request.
/// (`HTTP2-Settings` belongs to an `h2c` upgrade, which the proxy never passes on.)
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    HTTP2_SETTINGS,
];

/// Headers a `Connection` option may not remove: without them the request would change meaning
/// or framing, which a client could otherwise abuse (`Connection: host`). `te` is handled apart.
const NOT_CONNECTION_OPTIONS: [HeaderName; 3] = [header::HOST, header::CONTENT_LENGTH, header::TE];

/// Removes hop-by-hop headers before forwarding: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `HTTP2-Settings` and
/// `Trailer`. `TE` is
/// reduced to `trailers` when it asks for them (gRPC needs `te: trailers` over HTTP/2, the only
/// value HTTP/2 allows) and removed otherwise. End-to-end headers such as `Proxy-Authorization`
/// stay. Upgrades (WebSocket) are the forwarding code's business, not a header to pass on.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|option| HeaderName::from_bytes(option.trim().as_bytes()).ok())
        .filter(|name| !NOT_CONNECTION_OPTIONS.contains(name))
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    let wants_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let coding = coding.split(';').next().unwrap_or_default().trim();
            coding.eq_ignore_ascii_case("trailers")
        });
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(header::TE);
    }
}

/// Keeps an incoming non-empty `x-request-id` (so a request keeps its id across hops);
/// otherwise sets a new random UUID v4. Returns the value the request now carries.
pub fn ensure_request_id(headers: &mut HeaderMap, rng: &mut fastrand::Rng) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID)
        && !id.as_bytes().iter().all(u8::is_ascii_whitespace)
    {
        return id.clone();
    }
    let id = uuid_v4(rng);
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// A random UUID (version 4, RFC 9562) in its hyphenated lowercase text form.
fn uuid_v4(rng: &mut fastrand::Rng) -> HeaderValue {
    let mut bytes = rng.u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        let _ = write!(text, "{byte:02x}");
    }
    ascii_value(text)
}

/// The span this hop records: written to the forwarded request so the next hop continues it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span; `None` when this hop starts the trace.
    pub parent_span_id: Option<[u8; 8]>,
}

/// What the incoming headers say.
#[derive(Debug, Default)]
struct Incoming {
    /// The caller's trace and span, if a valid context came in.
    context: Option<([u8; 16], [u8; 8])>,
    sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1` or `b3: …-d`): sampled, and passed on as debug.
    debug: bool,
}

/// Decides whether this hop records a span and, if it does, continues the incoming trace with
/// a child span (or starts a new trace if none, or no valid one, came in) and writes it in both
/// W3C and B3 headers, so the next hop understands it whichever it reads.
///
/// Incoming context is read from `traceparent`, else a single `b3`, else the `x-b3-*` headers,
/// the first valid one winning; 64-bit B3 trace ids are left-padded to 128 bits. The incoming
/// sampling decision is kept; only where there is none is `sample_new` asked (so the sampler
/// runs once per trace, at its first meshed hop). An unsampled request returns `None` and its
/// headers are left exactly as they came: nothing is recorded, so there is no span of this hop
/// for the next one to point at, and the caller's own context (if any) still reaches the app.
/// `tracestate` is left untouched; a single `b3` header is removed so it cannot contradict.
pub fn propagate_trace(
    headers: &mut HeaderMap,
    sample_new: impl FnOnce(&mut fastrand::Rng) -> bool,
    rng: &mut fastrand::Rng,
) -> Option<TraceContext> {
    let incoming = read_traceparent(headers)
        .or_else(|| read_b3_single(headers))
        .or_else(|| read_b3_multi(headers))
        .unwrap_or_else(|| sampling_only(headers));
    let sampled = incoming.debug || incoming.sampled.unwrap_or_else(|| sample_new(rng));
    if !sampled {
        return None;
    }
    let span_id = rng.u64(1..).to_be_bytes();
    let (trace_id, parent_span_id) = match incoming.context {
        Some((trace_id, parent)) => (trace_id, Some(parent)),
        None => (rng.u128(1..).to_be_bytes(), None),
    };
    let context = TraceContext {
        trace_id,
        span_id,
        parent_span_id,
    };
    write_trace(headers, &context, incoming.debug);
    Some(context)
}

fn write_trace(headers: &mut HeaderMap, context: &TraceContext, debug: bool) {
    let trace_id = hex(&context.trace_id);
    let span_id = hex(&context.span_id);
    headers.insert(
        TRACEPARENT,
        ascii_value(format!("00-{trace_id}-{span_id}-01")),
    );
    headers.remove(B3);
    headers.insert(X_B3_TRACEID, ascii_value(trace_id));
    headers.insert(X_B3_SPANID, ascii_value(span_id));
    match context.parent_span_id {
        Some(parent) => {
            headers.insert(X_B3_PARENTSPANID, ascii_value(hex(&parent)));
        }
        None => {
            headers.remove(X_B3_PARENTSPANID);
        }
    }
    // B3: debug implies sampled, and is sent instead of `x-b3-sampled`.
    if debug {
        headers.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
        headers.remove(X_B3_SAMPLED);
    } else {
        headers.remove(X_B3_FLAGS);
        headers.insert(X_B3_SAMPLED, HeaderValue::from_static("1"));
    }
}

/// W3C Trace Context: `version-traceid-parentid-flags`, lowercase hex. Versions above 00 may
/// append fields after the four known ones; version ff is invalid.
fn read_traceparent(headers: &HeaderMap) -> Option<Incoming> {
    let text = single(headers, &TRACEPARENT)?.trim();
    let mut fields = text.split('-');
    let version = decode::<1>(fields.next()?, true)?[0];
    let trace_id = nonzero(decode::<16>(fields.next()?, true)?)?;
    let span_id = nonzero(decode::<8>(fields.next()?, true)?)?;
    let flags = decode::<1>(fields.next()?, true)?[0];
    let extra = fields.next().is_some();
    if version == 0xff || (version == 0 && extra) {
        return None;
    }
    Some(Incoming {
        context: Some((trace_id, span_id)),
        sampled: Some(flags & 1 == 1),
        debug: false,
    })
}

/// B3 single header: `traceid-spanid[-sampling[-parentspanid]]`. A sampling-only value
/// (`0`, `1`, `d`) carries no context and is read by [`sampling_only`].
fn read_b3_single(headers: &HeaderMap) -> Option<Incoming> {
    let text = single(headers, &B3)?.trim();
    let mut fields = text.split('-');
    let trace_id = b3_trace_id(fields.next()?)?;
    let span_id = nonzero(decode::<8>(fields.next()?, false)?)?;
    let (sampled, debug) = match fields.next() {
        Some(state) => b3_single_sampling(state)?,
        None => (None, false),
    };
    if let Some(parent) = fields.next() {
        decode::<8>(parent, false)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Incoming {
        context: Some((trace_id, span_id)),
        sampled,
        debug,
    })
}

fn b3_single_sampling(state: &str) -> Option<(Option<bool>, bool)> {
    match state {
        "1" => Some((Some(true), false)),
        "0" => Some((Some(false), false)),
        "d" => Some((Some(true), true)),
        _ => None,
    }
}

/// B3 multiple headers: `x-b3-traceid` and `x-b3-spanid` are required for a context.
fn read_b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let trace_id = b3_trace_id(single(headers, &X_B3_TRACEID)?.trim())?;
    let span_id = nonzero(decode::<8>(single(headers, &X_B3_SPANID)?.trim(), false)?)?;
    let (sampled, debug) = b3_multi_sampling(headers);
    Some(Incoming {
        context: Some((trace_id, span_id)),
        sampled,
        debug,
    })
}

fn b3_multi_sampling(headers: &HeaderMap) -> (Option<bool>, bool) {
    if single(headers, &X_B3_FLAGS).map(str::trim) == Some("1") {
        return (Some(true), true);
    }
    // `true` and `false` are what some old B3 senders wrote.
    let sampled = match single(headers, &X_B3_SAMPLED).map(str::trim) {
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    };
    (sampled, false)
}

/// No valid context came in, but a B3 sender may still have decided on sampling.
fn sampling_only(headers: &HeaderMap) -> Incoming {
    let (sampled, debug) = match single(headers, &B3).map(str::trim) {
        Some(state) => b3_single_sampling(state).unwrap_or_default(),
        None => b3_multi_sampling(headers),
    };
    Incoming {
        context: None,
        sampled,
        debug,
    }
}

/// 128-bit or 64-bit (left-padded with zeros) B3 trace id.
fn b3_trace_id(text: &str) -> Option<[u8; 16]> {
    let trace_id = if text.len() == 16 {
        let mut padded = [0; 16];
        padded[8..].copy_from_slice(&decode::<8>(text, false)?);
        padded
    } else {
        decode::<16>(text, false)?
    };
    nonzero(trace_id)
}

/// The value of a header that occurs once; repeated trace headers are ambiguous, so ignored.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

/// Exactly `2 × N` hex digits; W3C allows only lowercase, B3 senders vary.
fn decode<const N: usize>(text: &str, lowercase_only: bool) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0], lowercase_only)? << 4) | nibble(pair[1], lowercase_only)?;
    }
    Some(out)
}

fn nibble(digit: u8, lowercase_only: bool) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' if !lowercase_only => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// All-zero ids are invalid in both formats.
fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    id.iter().any(|b| *b != 0).then_some(id)
}

/// Lowercase hex, as both formats (and Zipkin's JSON) write ids.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// A header value from text this module generated (hex, digits and dashes), which is always
/// valid; the fallback only keeps the proxy from ever panicking on it.
fn ascii_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn get<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
        map.get(name).map(|v| v.to_str().expect("ascii"))
    }

    fn rng() -> fastrand::Rng {
        fastrand::Rng::with_seed(11)
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Custom"),
            ("connection", "x-other , upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "expires"),
            ("te", "gzip"),
            ("x-custom", "1"),
            ("x-other", "2"),
            ("proxy-authorization", "Basic abc"),
            ("authorization", "Bearer t"),
            ("content-type", "text/plain"),
        ]);
        remove_hop_by_hop(&mut map);
        let mut left: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["authorization", "content-type", "proxy-authorization"]
        );
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut map = headers(&[("te", "trailers")]);
        remove_hop_by_hop(&mut map);
        assert_eq!(get(&map, "te"), Some("trailers"));

        // HTTP/1.1 senders must name TE in Connection; gRPC still needs it.
        let mut map = headers(&[("te", "deflate;q=0.5, Trailers"), ("connection", "TE")]);
        remove_hop_by_hop(&mut map);
        assert_eq!(get(&map, "te"), Some("trailers"));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        let mut map = headers(&[
            ("connection", "host, content-length, bad header"),
            ("host", "backend"),
            ("content-length", "3"),
        ]);
        remove_hop_by_hop(&mut map);
        assert_eq!(get(&map, "host"), Some("backend"));
        assert_eq!(get(&map, "content-length"), Some("3"));
        assert_eq!(get(&map, "connection"), None);
    }

    fn is_uuid_v4(text: &str) -> bool {
        let groups: Vec<_> = text.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            && groups[2].starts_with('4')
            && groups[3].starts_with(['8', '9', 'a', 'b'])
    }

    #[test]
    fn request_id_is_kept() {
        let mut map = headers(&[("x-request-id", "abc-123")]);
        let id = ensure_request_id(&mut map, &mut rng());
        assert_eq!(id, "abc-123");
        assert_eq!(get(&map, "x-request-id"), Some("abc-123"));
    }

    #[test]
    fn request_id_is_generated() {
        let mut rng = rng();
        for start in [headers(&[]), headers(&[("x-request-id", " ")])] {
            let mut map = start;
            let id = ensure_request_id(&mut map, &mut rng);
            let text = id.to_str().expect("ascii");
            assert!(is_uuid_v4(text), "{text}");
            assert_eq!(map.get("x-request-id"), Some(&id));
        }
        let a = ensure_request_id(&mut HeaderMap::new(), &mut rng);
        let b = ensure_request_id(&mut HeaderMap::new(), &mut rng);
        assert_ne!(a, b);
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    /// Checks that both formats say the same as `context`.
    fn assert_consistent(map: &HeaderMap, context: &TraceContext) {
        let trace = hex(&context.trace_id);
        let span = hex(&context.span_id);
        assert_eq!(
            get(map, "traceparent"),
            Some(format!("00-{trace}-{span}-01").as_str())
        );
        assert_eq!(get(map, "x-b3-traceid"), Some(trace.as_str()));
        assert_eq!(get(map, "x-b3-spanid"), Some(span.as_str()));
        let parent = context.parent_span_id.map(|p| hex(&p));
        assert_eq!(get(map, "x-b3-parentspanid"), parent.as_deref());
        match get(map, "x-b3-flags") {
            Some("1") => assert!(get(map, "x-b3-sampled").is_none()),
            None => assert_eq!(get(map, "x-b3-sampled"), Some("1")),
            Some(other) => panic!("x-b3-flags {other}"),
        }
        assert_eq!(get(map, "b3"), None);
        assert_ne!(context.span_id, [0; 8]);
        assert_ne!(context.trace_id, [0; 16]);
    }

    /// The context of a hop that samples.
    fn traced(map: &mut HeaderMap, sample_new: bool) -> TraceContext {
        propagate_trace(map, |_| sample_new, &mut rng()).expect("sampled")
    }

    /// A hop that does not sample: `None`, and the headers exactly as they came.
    fn assert_untouched(pairs: &[(&str, &str)], sample_new: bool) {
        let mut map = headers(pairs);
        let context = propagate_trace(&mut map, |_| sample_new, &mut rng());
        assert_eq!(context, None, "{pairs:?}");
        assert_eq!(map, headers(pairs));
    }

    fn decode_hex<const N: usize>(text: &str) -> [u8; N] {
        decode(text, true).expect("hex")
    }

    #[test]
    fn traceparent_gets_a_child_span() {
        let mut map = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ]);
        let context = traced(&mut map, false);
        assert_eq!(context.trace_id, decode_hex(TRACE));
        assert_eq!(context.parent_span_id, Some(decode_hex(SPAN)));
        assert_ne!(context.span_id, decode_hex::<8>(SPAN));
        assert_consistent(&map, &context);
        assert_eq!(
            get(&map, "tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    #[test]
    fn traceparent_unsampled_and_future_versions() {
        // The caller decided not to sample: that stands, whatever this proxy's sampler says.
        assert_untouched(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))], true);

        let mut map = headers(&[("traceparent", &format!("cc-{TRACE}-{SPAN}-01-what-ever"))]);
        let context = traced(&mut map, false);
        assert_eq!(context.trace_id, decode_hex(TRACE));
        assert_consistent(&map, &context);
    }

    #[test]
    fn invalid_traceparent_starts_a_new_trace() {
        let zeros32 = "0".repeat(32);
        let zeros16 = "0".repeat(16);
        let upper = TRACE.to_uppercase();
        for bad in [
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{zeros32}-{SPAN}-01"),
            format!("00-{TRACE}-{zeros16}-01"),
            format!("00-{upper}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{}-{SPAN}-01", &TRACE[..30]),
            format!("00-{TRACE}-{SPAN}-0g"),
            format!("0-{TRACE}-{SPAN}-01"),
            "garbage".to_owned(),
            String::new(),
        ] {
            assert_untouched(&[("traceparent", &bad)], false);
            let mut map = headers(&[("traceparent", &bad)]);
            let context = traced(&mut map, true);
            assert_ne!(context.trace_id, decode_hex(TRACE), "{bad}");
            assert_eq!(context.parent_span_id, None, "{bad}");
            assert_consistent(&map, &context);
        }
        // Two traceparent headers are ambiguous.
        let mut map = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ]);
        let context = traced(&mut map, true);
        assert_eq!(context.parent_span_id, None);
        assert_consistent(&map, &context);
    }

    #[test]
    fn new_trace_without_any_headers() {
        let mut rng = rng();
        let mut map = HeaderMap::new();
        let first = propagate_trace(&mut map, |_| true, &mut rng).expect("sampled");
        assert_eq!(first.parent_span_id, None);
        assert_consistent(&map, &first);
        // The next hop continues it.
        let second = propagate_trace(&mut map, |_| false, &mut rng).expect("sampled");
        assert_eq!(second.trace_id, first.trace_id);
        assert_eq!(second.parent_span_id, Some(first.span_id));
        assert_consistent(&map, &second);
    }

    #[test]
    fn b3_multi_is_read() {
        let mut map = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "1111111111111111"),
            ("x-b3-sampled", "1"),
        ]);
        let context = traced(&mut map, false);
        assert_eq!(context.trace_id, decode_hex(TRACE));
        assert_eq!(context.parent_span_id, Some(decode_hex(SPAN)));
        assert_consistent(&map, &context);

        // Debug means sampled, and stays debug.
        let mut map = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        let context = traced(&mut map, false);
        assert_eq!(get(&map, "x-b3-flags"), Some("1"));
        assert_consistent(&map, &context);

        // No decision: `sample_new` makes one.
        let mut map = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]);
        let context = traced(&mut map, true);
        assert_eq!(context.trace_id, decode_hex(TRACE));
        assert_consistent(&map, &context);
    }

    #[test]
    fn b3_single_is_read() {
        let mut map = headers(&[("b3", &format!("{TRACE}-{SPAN}-1-1111111111111111"))]);
        let context = traced(&mut map, false);
        assert_eq!(context.trace_id, decode_hex(TRACE));
        assert_eq!(context.parent_span_id, Some(decode_hex(SPAN)));
        assert_consistent(&map, &context);

        assert_untouched(&[("b3", &format!("{TRACE}-{SPAN}-0"))], true);

        let mut map = headers(&[("b3", &format!("{TRACE}-{SPAN}-d"))]);
        let context = traced(&mut map, false);
        assert_eq!(get(&map, "x-b3-flags"), Some("1"));
        assert_consistent(&map, &context);

        // No decision: the sampler makes one.
        assert_untouched(&[("b3", &format!("{TRACE}-{SPAN}"))], false);
        let mut map = headers(&[("b3", &format!("{TRACE}-{SPAN}"))]);
        let context = traced(&mut map, true);
        assert_eq!(context.parent_span_id, Some(decode_hex(SPAN)));
        assert_consistent(&map, &context);
    }

    #[test]
    fn b3_single_wins_over_multi_and_bad_values_are_ignored() {
        let other = "a".repeat(32);
        let mut map = headers(&[
            ("b3", &format!("{TRACE}-{SPAN}-1")),
            ("x-b3-traceid", &other),
            ("x-b3-spanid", SPAN),
        ]);
        let context = traced(&mut map, false);
        assert_eq!(context.trace_id, decode_hex(TRACE));
        assert_consistent(&map, &context);

        for bad in [
            format!("{TRACE}-{SPAN}-x"),
            format!("{TRACE}-{SPAN}-1-zz"),
            format!("{TRACE}-{SPAN}-1-1111111111111111-more"),
            format!("{TRACE}-0000000000000000"),
            format!("{}-{SPAN}", &TRACE[..20]),
        ] {
            let mut map = headers(&[("b3", &bad)]);
            let context = traced(&mut map, true);
            assert_eq!(context.parent_span_id, None, "{bad}");
            assert_consistent(&map, &context);
        }
    }

    #[test]
    fn b3_sampling_only_decides_a_new_trace() {
        let mut map = headers(&[("b3", "1")]);
        let context = traced(&mut map, false);
        assert_eq!(context.parent_span_id, None);
        assert_consistent(&map, &context);

        assert_untouched(&[("x-b3-sampled", "0")], true);
        // Nothing at all, and the sampler says no: nothing is written (no cost, no headers).
        assert_untouched(&[], false);
    }

    #[test]
    fn b3_64_bit_trace_ids_are_padded() {
        let short = "a3ce929d0e0e4736";
        let mut expected = [0u8; 16];
        expected[8..].copy_from_slice(&decode_hex::<8>(short));

        let mut map = headers(&[("x-b3-traceid", short), ("x-b3-spanid", SPAN)]);
        let context = traced(&mut map, true);
        assert_eq!(context.trace_id, expected);
        assert_eq!(
            get(&map, "x-b3-traceid"),
            Some("0000000000000000a3ce929d0e0e4736")
        );
        assert_consistent(&map, &context);

        let upper = short.to_uppercase();
        let mut map = headers(&[("b3", &format!("{upper}-{SPAN}-1"))]);
        let context = traced(&mut map, false);
        assert_eq!(context.trace_id, expected);
        assert_consistent(&map, &context);
    }

    #[test]
    fn traceparent_wins_and_invalid_one_falls_back_to_b3() {
        let other = "a".repeat(32);
        let mut map = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("x-b3-traceid", &other),
            ("x-b3-spanid", SPAN),
        ]);
        let context = traced(&mut map, false);
        assert_eq!(context.trace_id, decode_hex(TRACE));
        assert_consistent(&map, &context);

        let mut map = headers(&[
            ("traceparent", "00-garbage"),
            ("x-b3-traceid", &other),
            ("x-b3-spanid", SPAN),
        ]);
        let context = traced(&mut map, true);
        assert_eq!(context.trace_id, decode_hex(&other));
        assert_consistent(&map, &context);
    }

    #[test]
    fn the_sampler_is_asked_only_without_a_decision() {
        let asked = std::cell::Cell::new(0);
        let sampler = |_: &mut fastrand::Rng| {
            asked.set(asked.get() + 1);
            false
        };
        let decided = [
            format!("00-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-00"),
        ];
        for traceparent in &decided {
            let mut map = headers(&[("traceparent", traceparent)]);
            let _ = propagate_trace(&mut map, sampler, &mut rng());
        }
        assert_eq!(asked.get(), 0, "a caller's decision stands");
        let _ = propagate_trace(&mut HeaderMap::new(), sampler, &mut rng());
        assert_eq!(asked.get(), 1);
    }
}
