//! Fuzz targets for what the mesh reads from untrusted peers, on stable Rust (proptest: random
//! and structure-aware inputs, shrunk to a minimal failing one):
//!
//! | target | code | inputs |
//! |---|---|---|
//! | `sni_*` | `proxy::sni::server_name` | random bytes; ClientHellos built with a name, split into records, mutated |
//! | `detect_*` | `proxy::detect::{classify, detect}` | random bytes; HTTP/1, HTTP/2 and TLS starts sent in random pieces |
//! | `admission_*` | `inject::webhook::{parse_review, respond}`, `controlplane::validate::review` | random bytes and JSON; valid AdmissionReviews with random edits |
//! | `config_*` | `proxy::config::load::parse`, `Compiled::new`, `xds::convert`, `xds::resources` | random text and protobuf; a rich valid config with random edits |
//! | `stream_*` | the stream's messages: responses as the proxy folds them, requests against a real `PushServer` | random bytes; valid messages with random fields and corruptions |
//!
//! Every target checks that nothing panics (errors are fine) and, where there is one, a property
//! (a ClientHello built with name N reads back N; HTTP/1 is HTTP/1 whatever the split; a config
//! survives its round trips; the control plane keeps syncing a well-behaved proxy).
//!
//! Each target runs for `SKEIN_FUZZ_SECONDS` (default 2) of wall-clock time in batches with
//! fresh random seeds, then prints its case count. To fuzz longer, one target at a time:
//!
//! ```sh
//! SKEIN_FUZZ_SECONDS=300 cargo test --release --test fuzz -- --test-threads 1 --nocapture sni_
//! ```
//!
//! A failure panics with the minimal failing input (`Debug`): copy it into a regression test at
//! the end of this file.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use prost::Message;
use serde_json::{Value, json};

use skein::api::MeshConfigSpec;
use skein::controlplane::validate;
use skein::inject::InjectConfig;
use skein::inject::webhook::{parse_review, respond};
use skein::proxy::config::load;
use skein::proxy::config::{Compiled, ProxyConfig};
use skein::proxy::detect::{self, Detected, H2_PREFACE};
use skein::proxy::sni::{SniError, server_name};
use skein::xds::config as pb;
use skein::xds::convert;
use skein::xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use skein::xds::resources::{self, Resources, TYPE_URLS};

// ---- The runner ----

/// Seconds each target runs for (`SKEIN_FUZZ_SECONDS`, default 2).
fn budget() -> Duration {
    let seconds = std::env::var("SKEIN_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

/// Runs `test` on inputs from `strategy` in batches of `batch` cases, each batch with a fresh
/// random seed, until the budget is spent (at least one batch). A failure panics with the
/// shrunk input.
fn fuzz<S>(
    name: &str,
    batch: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug + Clone,
{
    let started = Instant::now();
    let deadline = started + budget();
    let mut cases = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: batch,
            // The input is printed instead; regressions live in this file as tests.
            failure_persistence: None,
            ..Config::default()
        });
        match runner.run(&strategy, &test) {
            Ok(()) => cases += u64::from(batch),
            Err(TestError::Fail(reason, input)) => {
                // Once more on the minimal input, for what the target noted about it (the
                // document its edits made, say).
                NOTE.with_borrow_mut(String::clear);
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(input.clone())));
                let note = NOTE.with_borrow(Clone::clone);
                panic!(
                    "fuzz target {name} failed: {reason}\nminimal failing input:\n{input:#?}\n{note}"
                )
            }
            Err(TestError::Abort(reason)) => panic!("fuzz target {name} aborted: {reason}"),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!(
        "fuzz target {name}: {cases} cases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

thread_local! {
    static NOTE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Says what a case built from its input (printed with a failure, to copy into a regression
/// test).
fn note(what: impl std::fmt::Display) {
    NOTE.with_borrow_mut(|note| *note = what.to_string());
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Byte-level damage to a valid input.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(Index, u8),
    Set(Index, u8),
    /// A big-endian u16 written over two bytes: a length field, more often than not.
    Length(Index, u16),
    Insert(Index, Vec<u8>),
    Remove(Index, u8),
    Truncate(Index),
}

fn byte_edits(max: usize) -> impl Strategy<Value = Vec<ByteEdit>> {
    let edit = prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| ByteEdit::Flip(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| ByteEdit::Set(at, byte)),
        (
            any::<Index>(),
            prop_oneof![
                Just(0u16),
                Just(1),
                Just(0xffff),
                Just(0x4000),
                any::<u16>()
            ]
        )
            .prop_map(|(at, value)| ByteEdit::Length(at, value)),
        (any::<Index>(), bytes(8)).prop_map(|(at, bytes)| ByteEdit::Insert(at, bytes)),
        (any::<Index>(), 1u8..16).prop_map(|(at, n)| ByteEdit::Remove(at, n)),
        any::<Index>().prop_map(ByteEdit::Truncate),
    ];
    prop::collection::vec(edit, 1..max)
}

fn apply_byte_edits(bytes: &mut Vec<u8>, edits: &[ByteEdit]) {
    for edit in edits {
        if bytes.is_empty() {
            return;
        }
        match edit {
            ByteEdit::Flip(at, bit) => {
                let at = at.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            ByteEdit::Set(at, byte) => {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            ByteEdit::Length(at, value) => {
                let at = at.index(bytes.len());
                for (i, byte) in value.to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = byte;
                    }
                }
            }
            ByteEdit::Insert(at, more) => {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            ByteEdit::Remove(at, n) => {
                let at = at.index(bytes.len());
                let end = (at + usize::from(*n)).min(bytes.len());
                bytes.drain(at..end);
            }
            ByteEdit::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
        }
    }
}

/// Structural damage to a valid JSON document: a value replaced, removed, duplicated, or a
/// member added.
#[derive(Clone, Debug)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
    Duplicate(Index),
    Insert(Index, String, Value),
}

/// Values chosen to sit on the edges of what the fields accept.
const INTERESTING_STRINGS: &[&str] = &[
    "",
    " ",
    "*",
    "0",
    "-1",
    "65535",
    "65536",
    "4294967296",
    "1e400",
    "NaN",
    "0s",
    "1ms",
    "0.5ms",
    "1us",
    "-1s",
    "9999999999999h",
    "18446744073709551615ms",
    "1.5",
    "1m30s",
    "true",
    "null",
    "::",
    "::1",
    "0.0.0.0",
    "0.0.0.0:0",
    "[::1]:65535",
    "1.2.3.4:99999",
    "256.0.0.1",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "a..b",
    ".",
    "a.",
    "-a",
    "spiffe://",
    "spiffe://x/ns/a/sa/b",
    "/",
    "//",
    "/a/../b",
    "GET",
    "get",
    "CONNECT",
    "x-",
    ":authority",
    "host",
    "(",
    "[",
    "a{999999}",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{202e}",
    "skein-system",
    "kube-system",
    "demo",
    "Strict",
    "Disabled",
    "Permissive",
    "RegistryOnly",
    "AllowAny",
    "http",
    "tls",
    "tcp",
    "opaque",
    "grpc",
    "http2",
    "100m",
    "64Mi",
    "1Ei",
    "-5",
    "0.000001",
    "1/2",
    "9090,80",
    "1,2,,3",
    "1-65535",
    "a,b",
    "skein.dev/inject",
    "true ",
    "True",
    "debug",
    "trace",
    "x=1",
    "../../etc/passwd",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(65535),
            Just(65536),
            Just(i64::from(u32::MAX) + 1)
        ]
        .prop_map(Value::from),
        (-1.0e9f64..1.0e9).prop_map(Value::from),
        prop::sample::select(INTERESTING_STRINGS).prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn json_edits(max: usize) -> impl Strategy<Value = Vec<JsonEdit>> {
    let edit = prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(at, value)| JsonEdit::Replace(at, value)),
        2 => any::<Index>().prop_map(JsonEdit::Remove),
        1 => any::<Index>().prop_map(JsonEdit::Duplicate),
        1 => (any::<Index>(), "[a-zA-Z]{1,12}", json_value())
            .prop_map(|(at, key, value)| JsonEdit::Insert(at, key, value)),
    ];
    prop::collection::vec(edit, 1..max)
}

/// The JSON pointers of every value below the root.
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(key, child)| (key.replace('~', "~0").replace('/', "~1"), child))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), c))
            .collect(),
        _ => return,
    };
    for (step, child) in children {
        let pointer = format!("{at}/{step}");
        pointers(child, &pointer, out);
        out.push(pointer);
    }
}

fn apply_json_edits(doc: &mut Value, edits: &[JsonEdit]) {
    for edit in edits {
        let mut all = Vec::new();
        pointers(doc, "", &mut all);
        let pick = |at: &Index| all.get(at.index(all.len().max(1))).cloned();
        match edit {
            JsonEdit::Replace(at, value) => {
                if let Some(slot) = pick(at).and_then(|p| doc.pointer_mut(&p).map(|_| p)) {
                    *doc.pointer_mut(&slot).expect("the pointer was just found") = value.clone();
                }
            }
            JsonEdit::Remove(at) | JsonEdit::Duplicate(at) => {
                let Some(pointer) = pick(at) else { continue };
                let (parent, last) = pointer.rsplit_once('/').expect("pointers start with /");
                let key = last.replace("~1", "/").replace("~0", "~");
                let duplicate = matches!(edit, JsonEdit::Duplicate(_));
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) if !duplicate => {
                        map.remove(&key);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if duplicate {
                                let copy = items[i].clone();
                                items.insert(i, copy);
                            } else {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            JsonEdit::Insert(at, key, value) => {
                let target = pick(at).unwrap_or_default();
                match doc.pointer_mut(&target) {
                    Some(Value::Object(map)) => {
                        map.insert(key.clone(), value.clone());
                    }
                    Some(Value::Array(items)) => items.push(value.clone()),
                    _ => {}
                }
            }
        }
    }
}

// ---- SNI ----

/// A DNS name as the parser accepts it, in mixed case, maybe with a trailing dot.
fn dns_name() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-zA-Z0-9_-]{1,30}", 1..6),
        any::<bool>(),
    )
        .prop_map(|(labels, dot)| {
            let mut name = labels.join(".");
            name.truncate(253);
            let mut name = name.trim_end_matches('.').to_owned();
            if dot {
                name.push('.');
            }
            name
        })
}

/// What `server_name` should give for a name sent as `name`.
fn expected_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The parts of a ClientHello that do not change its meaning for SNI.
#[derive(Clone, Debug)]
struct HelloShape {
    session_id: Vec<u8>,
    suites: u8,
    /// Extensions before and after `server_name` (type, data); never type 0.
    before: Vec<(u16, Vec<u8>)>,
    after: Vec<(u16, Vec<u8>)>,
    /// Each record's payload length; the last repeats.
    record_sizes: Vec<usize>,
    record_minor: u8,
    trailing: Vec<u8>,
}

fn extension() -> impl Strategy<Value = (u16, Vec<u8>)> {
    (1u16..=u16::MAX, bytes(40))
}

fn hello_shape() -> impl Strategy<Value = HelloShape> {
    (
        bytes(33).prop_map(|mut id| {
            id.truncate(32);
            id
        }),
        1u8..20,
        prop::collection::vec(extension(), 0..4),
        prop::collection::vec(extension(), 0..4),
        prop_oneof![Just(vec![16384]), prop::collection::vec(1usize..600, 1..5),],
        0u8..=4,
        bytes(16),
    )
        .prop_map(
            |(session_id, suites, before, after, record_sizes, record_minor, trailing)| {
                HelloShape {
                    session_id,
                    suites,
                    before,
                    after,
                    record_sizes,
                    record_minor,
                    trailing,
                }
            },
        )
}

fn push_vec16(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&u16::try_from(data.len()).expect("fits").to_be_bytes());
    out.extend_from_slice(data);
}

/// A ClientHello asking for `name` (none if `None`), framed as `shape` says. Returns the bytes
/// and how many of them make the ClientHello (the rest is `shape.trailing`).
fn build_hello(name: Option<&str>, shape: &HelloShape) -> (Vec<u8>, usize) {
    let mut extensions = Vec::new();
    let mut extension = |ty: u16, data: &[u8]| {
        extensions.extend_from_slice(&ty.to_be_bytes());
        push_vec16(&mut extensions, data);
    };
    for (ty, data) in &shape.before {
        extension(*ty, data);
    }
    if let Some(name) = name {
        let mut list = vec![0u8];
        push_vec16(&mut list, name.as_bytes());
        let mut data = Vec::new();
        push_vec16(&mut data, &list);
        extension(0, &data);
    }
    for (ty, data) in &shape.after {
        extension(*ty, data);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(u8::try_from(shape.session_id.len()).expect("at most 32"));
    body.extend_from_slice(&shape.session_id);
    let suites: Vec<u8> = (0..shape.suites).flat_map(|i| [0x13, i]).collect();
    push_vec16(&mut body, &suites);
    body.extend_from_slice(&[1, 0]);
    push_vec16(&mut body, &extensions);
    let len = u32::try_from(body.len()).expect("small").to_be_bytes();
    let mut message = vec![0x01, len[1], len[2], len[3]];
    message.extend_from_slice(&body);

    let mut out = Vec::new();
    let mut rest = &message[..];
    let mut sizes = shape.record_sizes.iter().chain(std::iter::repeat(
        shape.record_sizes.last().expect("at least one size"),
    ));
    while !rest.is_empty() {
        let size = (*sizes.next().expect("endless")).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        out.extend_from_slice(&[0x16, 0x03, shape.record_minor]);
        push_vec16(&mut out, chunk);
        rest = tail;
    }
    let hello_len = out.len();
    out.extend_from_slice(&shape.trailing);
    (out, hello_len)
}

/// A real ClientHello, as rustls writes it.
fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("a DNS name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// A name rustls accepts (and does not take for an IP address).
fn rustls_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z][a-zA-Z0-9]{0,12}", 1..5).prop_map(|labels| labels.join("."))
}

/// A result `server_name` can give only for a complete ClientHello or a decided refusal: more
/// bytes after it must not change it.
fn decided(result: &Result<Option<String>, SniError>) -> bool {
    !matches!(result, Err(SniError::Incomplete))
}

/// What any successful parse must look like, whatever the input: routing and egress rules
/// compare it with lowercase DNS names.
fn check_name(name: &str) -> Result<(), TestCaseError> {
    prop_assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
    prop_assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
        "{name:?}"
    );
    prop_assert!(!name.split('.').any(str::is_empty), "{name:?}");
    Ok(())
}

fn check_any_sni_input(input: &[u8]) -> Result<(), TestCaseError> {
    let result = server_name(input);
    if let Ok(Some(name)) = &result {
        check_name(name)?;
    }
    if decided(&result) {
        let mut longer = input.to_vec();
        longer.extend_from_slice(b"\x16\x03\x01\x00\x05hello");
        prop_assert_eq!(
            server_name(&longer),
            result,
            "more bytes changed a decided result"
        );
    }
    Ok(())
}

#[test]
fn sni_random_bytes() {
    let handshake_like = (bytes(600), any::<u8>(), any::<u16>()).prop_map(|(tail, minor, len)| {
        let mut input = vec![0x16, 0x03, minor % 6];
        input.extend_from_slice(&len.to_be_bytes());
        input.push(0x01);
        input.extend_from_slice(&tail);
        input
    });
    fuzz(
        "sni_random_bytes",
        256,
        prop_oneof![bytes(600), handshake_like],
        |input| check_any_sni_input(&input),
    );
}

#[test]
fn sni_a_built_client_hello_reads_back_its_name() {
    let strategy = (prop::option::of(dns_name()), hello_shape(), any::<Index>());
    fuzz("sni_built_hello", 128, strategy, |(name, shape, cut)| {
        let (hello, hello_len) = build_hello(name.as_deref(), &shape);
        prop_assert_eq!(server_name(&hello), Ok(name.as_deref().map(expected_name)));
        // Any strict prefix of the ClientHello is a start: the proxy reads on.
        let cut = cut.index(hello_len);
        prop_assert_eq!(
            server_name(&hello[..cut]),
            Err(SniError::Incomplete),
            "cut at {}",
            cut
        );
        Ok(())
    });
}

#[test]
fn sni_a_rustls_client_hello_reads_back_its_name() {
    fuzz("sni_rustls_hello", 32, rustls_name(), |name| {
        let hello = rustls_hello(&name);
        prop_assert_eq!(server_name(&hello), Ok(Some(name.to_ascii_lowercase())));
        Ok(())
    });
}

#[test]
fn sni_mutated_client_hellos() {
    let strategy = (dns_name(), hello_shape(), byte_edits(6));
    fuzz(
        "sni_mutated_hello",
        128,
        strategy,
        |(name, shape, edits)| {
            let (mut hello, _) = build_hello(Some(&name), &shape);
            apply_byte_edits(&mut hello, &edits);
            note(format!("bytes: {hello:?}"));
            check_any_sni_input(&hello)
        },
    );
    let hello = rustls_hello("api.example.com");
    fuzz("sni_mutated_rustls_hello", 128, byte_edits(6), |edits| {
        let mut hello = hello.clone();
        apply_byte_edits(&mut hello, &edits);
        note(format!("bytes: {hello:?}"));
        check_any_sni_input(&hello)
    });
}

// ---- Protocol detection ----

/// Detection reads a connection in whatever pieces arrive: once `classify` has decided on a
/// prefix, no more bytes may change its mind.
fn check_classify_every_prefix(input: &[u8]) -> Result<(), TestCaseError> {
    let mut decision: Option<(usize, Detected)> = None;
    for end in 0..=input.len() {
        let now = detect::classify(&input[..end]);
        match (decision, now) {
            (Some((at, before)), now) => prop_assert_eq!(
                now,
                Some(before),
                "decided {:?} after {} bytes, then {:?} after {}",
                before,
                at,
                now,
                end
            ),
            (None, Some(protocol)) => decision = Some((end, protocol)),
            (None, None) => {}
        }
    }
    Ok(())
}

#[test]
fn detect_random_bytes() {
    let near_miss = (
        prop::sample::select(vec![
            &b"GET / HTTP/1.1\r\n"[..],
            H2_PREFACE,
            b"\x16\x03\x01",
            b"CONNECT a:443 HTTP/1.0\r\n",
        ]),
        byte_edits(4),
    )
        .prop_map(|(start, edits)| {
            let mut input = start.to_vec();
            apply_byte_edits(&mut input, &edits);
            input
        });
    fuzz(
        "detect_random_bytes",
        256,
        prop_oneof![bytes(200), near_miss],
        |input| check_classify_every_prefix(&input),
    );
}

/// `METHOD SP target SP HTTP/1.x CRLF`, and the length of that line, with headers after it.
fn http1_request() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,24}",
        prop::collection::vec(0x21u8..=0xff, 1..200),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        "([A-Za-z-]{1,12}: [ -~]{0,30}\r\n){0,4}",
    )
        .prop_map(|(method, target, version, headers)| {
            let mut request = method.into_bytes();
            request.push(b' ');
            request.extend(target.into_iter().map(|b| if b == 0x7f { b'x' } else { b }));
            request.push(b' ');
            request.extend_from_slice(version.as_bytes());
            request.extend_from_slice(b"\r\n");
            let line = request.len();
            request.extend_from_slice(headers.as_bytes());
            request.extend_from_slice(b"\r\n");
            (request, line)
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `detect` on `input` sent in pieces of the given sizes (the last repeats).
fn detect_in_pieces(
    rt: &tokio::runtime::Runtime,
    input: &[u8],
    pieces: &[usize],
) -> detect::Detection {
    use tokio::io::AsyncWriteExt;
    let input = input.to_vec();
    let pieces = pieces.to_vec();
    rt.block_on(async move {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let mut rest = &input[..];
            let mut sizes = pieces
                .iter()
                .chain(std::iter::repeat(pieces.last().expect("a size")));
            while !rest.is_empty() {
                let size = (*sizes.next().expect("endless")).clamp(1, rest.len());
                let (piece, tail) = rest.split_at(size);
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
                rest = tail;
            }
            client
        });
        let detection = detect::detect(&mut server, Duration::from_secs(10))
            .await
            .expect("reading from a duplex");
        drop(writer.await.expect("the writer"));
        detection
    })
}

#[test]
fn detect_http1_whatever_the_split() {
    let rt = runtime();
    let strategy = (http1_request(), prop::collection::vec(1usize..40, 1..6));
    fuzz("detect_http1", 64, strategy, |((request, line), pieces)| {
        for end in 0..line {
            prop_assert_eq!(detect::classify(&request[..end]), None, "{} bytes", end);
        }
        prop_assert_eq!(detect::classify(&request[..line]), Some(Detected::Http1));
        let detection = detect_in_pieces(&rt, &request, &pieces);
        prop_assert_eq!(detection.protocol, Detected::Http1);
        prop_assert!(detection.prefix.len() >= line);
        prop_assert!(
            request.starts_with(&detection.prefix),
            "the prefix is what was sent"
        );
        Ok(())
    });
}

#[test]
fn detect_http2_and_tls_whatever_the_split() {
    let rt = runtime();
    let strategy = (
        bytes(64),
        prop::option::of(dns_name()),
        hello_shape(),
        prop::collection::vec(1usize..300, 1..6),
    );
    fuzz(
        "detect_h2_tls",
        64,
        strategy,
        |(after, name, shape, pieces)| {
            let mut h2 = H2_PREFACE.to_vec();
            h2.extend_from_slice(&after);
            let detection = detect_in_pieces(&rt, &h2, &pieces);
            prop_assert_eq!(detection.protocol, Detected::Http2);
            prop_assert!(h2.starts_with(&detection.prefix));

            let (hello, hello_len) = build_hello(name.as_deref(), &shape);
            let detection = detect_in_pieces(&rt, &hello, &pieces);
            prop_assert_eq!(detection.protocol, Detected::Tls);
            // A ClientHello longer than detection reads is still TLS, without its name.
            if hello_len <= detect::MAX_TLS_PREFIX {
                prop_assert_eq!(detection.sni, name.as_deref().map(expected_name));
            }
            prop_assert!(hello.starts_with(&detection.prefix));
            Ok(())
        },
    );
}

// ---- AdmissionReview ----

fn inject_config() -> InjectConfig {
    InjectConfig {
        mesh: MeshConfigSpec::default(),
        xds_address: "skein-control-plane.skein-system.svc:9090".to_owned(),
        xds_trust_bundle_pem: None,
        native_sidecars_supported: true,
        sleep_hooks_supported: true,
    }
}

/// A pod as workloads create them, with every override annotation the injector reads.
fn seed_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c-",
            "namespace": "demo",
            "labels": {"app": "web", "version": "v1", "skein.dev/inject": "true"},
            "annotations": {
                "skein.dev/proxy-cpu": "100m",
                "skein.dev/proxy-memory": "64Mi",
                "skein.dev/proxy-cpu-limit": "1",
                "skein.dev/proxy-memory-limit": "256Mi",
                "skein.dev/proxy-log-level": "debug",
                "traffic.skein.dev/exclude-inbound-ports": "9090",
                "traffic.skein.dev/exclude-outbound-ports": "5432,6379",
                "traffic.skein.dev/include-outbound-ip-ranges": "10.0.0.0/8",
                "traffic.skein.dev/exclude-outbound-ip-ranges": "169.254.169.254/32",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "8080"
            }
        },
        "spec": {
            "serviceAccountName": "web",
            "initContainers": [{"name": "migrate", "image": "busybox", "command": ["true"]}],
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                    "livenessProbe": {"httpGet": {"path": "/live", "port": "http", "scheme": "HTTP"}},
                    "startupProbe": {"tcpSocket": {"port": 9090}},
                    "env": [{"name": "A", "value": "1"}]
                },
                {"name": "side", "image": "busybox", "args": ["sleep", "1d"]}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    })
}

fn review(kind: Value, namespace: Option<&str>, operation: &str, object: Value) -> Value {
    let mut request = json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": kind,
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "",
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": object,
        "dryRun": false
    });
    if let Some(namespace) = namespace {
        request["namespace"] = Value::from(namespace);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

fn pod_review(pod: Value) -> Value {
    review(
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        Some("demo"),
        "CREATE",
        pod,
    )
}

/// Whatever the body, both webhooks answer with an error or a response to the request's uid.
fn check_any_review_body(body: &[u8]) -> Result<(), TestCaseError> {
    let Ok(request) = parse_review(body) else {
        return Ok(());
    };
    let cfg = inject_config();
    let (response, _) = respond(&request, &cfg, None);
    prop_assert_eq!(&response.uid, &request.uid);
    let response = validate::review(&request, |_, _| true);
    prop_assert_eq!(&response.uid, &request.uid);
    Ok(())
}

#[test]
fn admission_random_bodies() {
    let strategy = prop_oneof![
        bytes(400),
        json_value().prop_map(|value| serde_json::to_vec(&value).expect("JSON")),
        (json_value(), json_value()).prop_map(|(object, kind)| {
            serde_json::to_vec(&review(kind, Some("demo"), "CREATE", object)).expect("JSON")
        }),
    ];
    fuzz("admission_random_bodies", 128, strategy, |body| {
        check_any_review_body(&body)
    });
}

#[test]
fn admission_injection_of_edited_pods() {
    let cfg = inject_config();
    let labels = prop::option::of(prop::collection::btree_map(
        prop::sample::select(vec!["skein.dev/inject", "skein-injection", "team"]),
        prop::sample::select(vec!["enabled", "true", "false", ""]),
        0..3,
    ));
    let strategy = (json_edits(6), labels);
    fuzz("admission_injection", 32, strategy, |(edits, labels)| {
        let mut pod = seed_pod();
        apply_json_edits(&mut pod, &edits);
        if !pod.is_object() {
            return Ok(());
        }
        // The apiserver always sends these right.
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        note(format!("pod: {pod}"));
        let body = serde_json::to_vec(&pod_review(pod.clone())).expect("JSON");
        let Ok(request) = parse_review(&body) else {
            return Ok(());
        };
        let labels: Option<BTreeMap<String, String>> = labels.map(|labels| {
            labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        });
        let (response, outcome) = respond(&request, &cfg, labels.as_ref());
        prop_assert_eq!(&response.uid, &request.uid);
        let Some(patch) = &response.patch else {
            return Ok(());
        };
        prop_assert!(response.allowed, "a patch comes with an allowed response");
        // The patch applies to the pod the apiserver holds, gives a valid Pod, and a second
        // pass over the injected pod changes nothing (the apiserver may reinvoke webhooks).
        let fail = |what: String| TestCaseError::fail(format!("{outcome:?}: {what}\npod: {pod}"));
        let patch: json_patch::Patch = serde_json::from_slice(patch)
            .map_err(|err| fail(format!("the patch is not a JSON patch: {err}")))?;
        let mut injected = pod.clone();
        json_patch::patch(&mut injected, &patch)
            .map_err(|err| fail(format!("the patch does not apply: {err}")))?;
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(injected.clone())
            .map_err(|err| fail(format!("the injected pod is not a Pod: {err}")))?;
        let body = serde_json::to_vec(&pod_review(injected)).expect("JSON");
        let again = parse_review(&body).map_err(|err| TestCaseError::fail(err.to_string()))?;
        let (response, outcome) = respond(&again, &cfg, labels.as_ref());
        prop_assert!(response.patch.is_none(), "injected twice: {:?}", outcome);
        Ok(())
    });
}

/// One object of each kind the validating webhook judges, from the samples users copy.
fn seed_rules() -> Vec<Value> {
    let mut rules = Vec::new();
    for text in [
        include_str!("../config/samples/traffic-rules.yaml"),
        include_str!("../config/samples/access-policies.yaml"),
    ] {
        rules.extend(skein::yaml::documents::<Value>(text).expect("the samples are YAML"));
    }
    rules.push(json!({
        "apiVersion": "skein.dev/v1alpha1",
        "kind": "MtlsPolicy",
        "metadata": {"name": "db", "namespace": "demo"},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, "mode": "Strict",
                 "ports": [{"port": 9090, "mode": "Permissive"}]}
    }));
    rules
}

#[test]
fn admission_validation_of_edited_rules() {
    let rules = seed_rules();
    let kinds = vec![
        "RouteRule",
        "EgressRule",
        "TrafficPolicy",
        "AccessPolicy",
        "MtlsPolicy",
        "Pod",
    ];
    let strategy = (
        any::<Index>(),
        prop::sample::select(kinds),
        any::<bool>(),
        prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT"]),
        json_edits(6),
    );
    fuzz(
        "admission_validation",
        64,
        strategy,
        |(seed, kind, same_kind, operation, edits)| {
            let mut object = seed.get(&rules).clone();
            apply_json_edits(&mut object, &edits);
            note(format!("object: {object}"));
            let kind = if same_kind {
                object["kind"].as_str().unwrap_or(kind).to_owned()
            } else {
                kind.to_owned()
            };
            let kind = json!({"group": "skein.dev", "version": "v1alpha1", "kind": kind});
            let body =
                serde_json::to_vec(&review(kind, Some("demo"), operation, object)).expect("JSON");
            check_any_review_body(&body)
        },
    );
}

// ---- The proxy's configuration ----

/// A configuration using every field, written as users write `--config` files.
const RICH_CONFIG: &str = r#"
version: "42"
workload: {name: frontend, namespace: demo}
outboundTrafficPolicy: RegistryOnly
opaquePorts: [5432, 6379]
detectTimeout: 250ms
draining: false
inboundMtls:
  mode: Permissive
  portModes: {"9090": Strict, "8081": Disabled}
  probes: [{port: 8080, httpPaths: [/ready, /live]}, {port: 9090}]
  nodeIp: 10.0.0.1
accessPolicies:
  - name: demo/deny-admin
    action: Deny
    rules: [{to: [{paths: [{prefix: /admin}]}]}]
  - name: demo/allow-frontend
    action: Allow
    rules:
      - from:
          - {identities: ["spiffe://cluster.local/ns/demo/sa/frontend"], namespaces: [demo]}
          - {unauthenticated: true}
        to: [{ports: [8080, 9090], methods: [GET, POST], paths: [{exact: /}, {prefix: /api/}]}]
  - {name: demo/try, action: Audit}
egress:
  - {host: api.example.com, ports: [443], protocol: tls}
  - {host: "*.example.org", protocol: http}
  - {host: "203.0.113.9", ports: [22, 2222], protocol: tcp}
  - {host: anything.example.net}
destinations:
  - name: backend.demo.svc.cluster.local
    addresses: ["198.19.0.20", "fd00::20"]
    hosts: [backend, backend.demo]
    loadBalancer: leastRequest
    outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 10s, maxEjectionPercent: 50}
    limits: {maxConnections: 100, maxPendingRequests: 10}
    ports:
      - port: 80
        protocol: http1
        endpoints:
          - address: "198.18.0.5:8080"
            labels: {version: v1, app: backend}
            workload: {name: backend-v1, namespace: demo}
          - address: "[fd00::5]:8080"
      - {port: 9000, protocol: grpc, endpoints: []}
      - {port: 5432, protocol: opaque, endpoints: [{address: "198.18.0.6:5432"}]}
      - {port: 81, protocol: http2, endpoints: []}
      - {port: 82, endpoints: []}
    routes:
      - name: canary
        matches:
          - path: {prefix: /api}
            method: GET
            headers: [{name: x-canary, value: {exact: "1"}}, {name: x-debug}]
            query: [{name: q, value: {regex: "a.*"}}]
          - path: {regex: "/v[0-9]+"}
        backends: [{subset: {version: v2}, weight: 10}, {weight: 90}]
        timeout: 1500ms
        retry:
          attempts: 2
          perTryTimeout: 300ms
          retryOn: [connect-failure, refused-stream, reset, 5xx, gateway-error,
                    retriable-status-codes, unavailable, cancelled, deadline-exceeded]
          retriableStatusCodes: [409, 429]
          baseBackoff: 10ms
          maxBackoff: 1s
          budget: {percent: 12.5, minPerSecond: 3, window: 30s}
        fault:
          delay: {percent: 5.5, duration: 2s}
          abort: {percent: 1.0, status: 503}
        mirror: {subset: {version: shadow}, percent: 25.0}
        requestHeaders: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
        responseHeaders: {set: {x-d: "3"}}
      - name: rest
        matches: [{path: {exact: /}}]
        fault: {}
  - name: plain.demo.svc.cluster.local
    ports: [{port: 80, endpoints: []}]
"#;

fn rich_value() -> Value {
    skein::yaml::from_str(RICH_CONFIG).expect("the rich config is YAML")
}

fn rich_config() -> ProxyConfig {
    let config = load::parse(RICH_CONFIG).expect("the rich config parses");
    Compiled::new(config.clone(), None).expect("the rich config compiles");
    config
}

fn sorted(mut config: ProxyConfig) -> ProxyConfig {
    config.destinations.sort_by(|a, b| a.name.cmp(&b.name));
    config
}

/// The configuration as the stream carries it, and back.
fn through_the_stream(config: &ProxyConfig) -> Option<ProxyConfig> {
    let resources = resources::split(config).ok()?;
    Some(resources::assemble(&resources).expect("what split gives assembles"))
}

/// Properties of a configuration that parsed: compiling never panics, its JSON form reads back
/// the same, and the stream's form is stable (one trip may round durations up to whole
/// milliseconds; a second changes nothing) and compiles like the original.
fn check_config(config: ProxyConfig) -> Result<(), TestCaseError> {
    let compiled = Compiled::new(config.clone(), None);
    let json = serde_json::to_value(&config).expect("a config serializes");
    let back: ProxyConfig = serde_json::from_value(json.clone()).map_err(|err| {
        TestCaseError::fail(format!("its own JSON does not read back: {err}\n{json}"))
    })?;
    prop_assert_eq!(&back, &config);
    let text = serde_json::to_string(&json).expect("JSON text");
    let reparsed = load::parse(&text).map_err(|err| {
        TestCaseError::fail(format!("its JSON text does not load: {err}\n{text}"))
    })?;
    prop_assert_eq!(&reparsed, &config);
    if let Some(once) = through_the_stream(&config) {
        let twice = through_the_stream(&once).expect("split worked once");
        prop_assert_eq!(&twice, &once);
        prop_assert_eq!(once.destinations.len(), config.destinations.len());
        if compiled.is_ok() {
            let recompiled = Compiled::new(once, None);
            prop_assert!(recompiled.is_ok(), "{:?}", recompiled.err());
        }
    }
    Ok(())
}

#[test]
fn config_the_rich_config_survives_its_round_trips() {
    let config = rich_config();
    assert_eq!(through_the_stream(&config), Some(sorted(config.clone())));
    check_config(config).expect("the rich config's properties");
}

#[test]
fn config_random_text() {
    let yamlish = prop::collection::vec(
        prop::sample::select(vec![
            "destinations",
            "egress",
            ":",
            " ",
            "\n",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "name",
            "ports",
            "port",
            "80",
            "-1",
            "1e99",
            "&a",
            "*a",
            "!!str",
            "|",
            "'",
            "\"",
            "<<",
            "detectTimeout",
            "0s",
            "routes",
            "~",
            "null",
            "#",
        ]),
        0..40,
    )
    .prop_map(|parts| parts.concat());
    fuzz(
        "config_random_text",
        256,
        prop_oneof!["\\PC{0,200}", yamlish],
        |text| {
            if let Ok(config) = load::parse(&text) {
                check_config(config)?;
            }
            Ok(())
        },
    );
}

#[test]
fn config_edited_rich_config() {
    let rich = rich_value();
    fuzz("config_edited", 64, json_edits(6), |edits| {
        let mut value = rich.clone();
        apply_json_edits(&mut value, &edits);
        let text = serde_json::to_string(&value).expect("JSON text");
        note(format!("config: {text}"));
        if let Ok(config) = load::parse(&text) {
            check_config(config)?;
        }
        Ok(())
    });
}

/// A resource message from its bytes as the stream would deliver them, made into a
/// configuration and compiled: errors are fine, panics are not.
fn check_resource_bytes(kind: usize, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut config = match kind % 3 {
        0 => match pb::ProxySettings::decode(bytes).map(convert::settings_from_proto) {
            Ok(Ok(config)) => config,
            _ => return Ok(()),
        },
        1 => match pb::Destination::decode(bytes).map(convert::destination_from_proto) {
            Ok(Ok(destination)) => ProxyConfig {
                destinations: vec![destination],
                ..ProxyConfig::default()
            },
            _ => return Ok(()),
        },
        _ => match pb::EgressPolicy::decode(bytes).map(convert::egress_from_proto) {
            Ok(Ok(egress)) => ProxyConfig {
                egress,
                ..ProxyConfig::default()
            },
            _ => return Ok(()),
        },
    };
    config.destinations.sort_by(|a, b| a.name.cmp(&b.name));
    let _ = Compiled::new(config.clone(), None);
    // What came off the wire goes back on it unchanged. Compared as JSON, where a NaN
    // percentage (which compiling refuses) is `null` and so equal to itself.
    if let Some(once) = through_the_stream(&config) {
        let json = |config: &ProxyConfig| serde_json::to_value(config).expect("serializes");
        prop_assert_eq!(json(&once), json(&config));
    }
    Ok(())
}

fn rich_resource_bytes() -> Vec<Vec<u8>> {
    let config = rich_config();
    let mut out = vec![convert::settings_to_proto(&config).encode_to_vec()];
    out.extend(
        config
            .destinations
            .iter()
            .map(|d| convert::destination_to_proto(d).encode_to_vec()),
    );
    out.push(convert::egress_to_proto(&config.egress).encode_to_vec());
    out
}

#[test]
fn config_random_and_mutated_resource_messages() {
    fuzz(
        "config_random_resources",
        256,
        (0usize..3, bytes(300)),
        |(kind, bytes)| check_resource_bytes(kind, &bytes),
    );
    let seeds = rich_resource_bytes();
    // Seeds: settings, two destinations, egress.
    let strategy = (any::<Index>(), 0usize..3, byte_edits(6));
    fuzz(
        "config_mutated_resources",
        128,
        strategy,
        |(seed, kind, edits)| {
            let index = seed.index(seeds.len());
            let kind = match index {
                0 => 0,
                i if i == seeds.len() - 1 => 2,
                _ if kind == 0 => 1,
                _ => kind,
            };
            let mut bytes = seeds[index].clone();
            apply_byte_edits(&mut bytes, &edits);
            note(format!("kind {kind}, bytes: {bytes:?}"));
            check_resource_bytes(kind, &bytes)
        },
    );
}

// ---- The stream's messages ----

/// What the proxy does with a response (`proxy::client`): fold it into what it holds, then,
/// once every type has arrived, assemble and compile.
fn fold(held: &mut Resources, response: &DeltaDiscoveryResponse) -> bool {
    let Some(type_url) = resources::known_type(&response.type_url) else {
        return false;
    };
    let set = held.entry(type_url).or_default();
    for name in &response.removed_resources {
        set.remove(name);
    }
    for resource in &response.resources {
        set.insert(resource.name.clone(), resource.clone());
    }
    true
}

fn assemble_and_compile(held: &Resources) {
    if let Ok(config) = resources::assemble(held) {
        let _ = Compiled::new(config, None);
    }
}

/// The responses of a first push of the rich config.
fn rich_responses() -> Vec<DeltaDiscoveryResponse> {
    let config = rich_config();
    let split = resources::split(&config).expect("splits");
    TYPE_URLS
        .iter()
        .map(|type_url| DeltaDiscoveryResponse {
            system_version_info: config.version.clone(),
            resources: split[type_url].values().cloned().collect(),
            type_url: (*type_url).to_owned(),
            removed_resources: Vec::new(),
            nonce: format!("n-{type_url}"),
        })
        .collect()
}

#[test]
fn stream_responses_the_proxy_receives() {
    let valid = rich_responses();
    let mut held = Resources::new();
    for response in &valid {
        assert!(fold(&mut held, response));
    }
    assert_eq!(resources::assemble(&held), Ok(sorted(rich_config())));

    fuzz(
        "stream_random_responses",
        128,
        prop::collection::vec(bytes(300), 1..4),
        |messages| {
            let mut held = Resources::new();
            for bytes in messages {
                if let Ok(response) = DeltaDiscoveryResponse::decode(&bytes[..]) {
                    fold(&mut held, &response);
                }
            }
            assemble_and_compile(&held);
            Ok(())
        },
    );

    // The valid push with damage: messages corrupted on the wire, resources renamed, retyped
    // or removed.
    #[derive(Clone, Debug)]
    enum Damage {
        Bytes(Index, Vec<ByteEdit>),
        Rename(Index, Index, String),
        Retype(Index, Index, Index),
        Remove(Index, String),
    }
    let damage = prop_oneof![
        (any::<Index>(), byte_edits(4)).prop_map(|(at, edits)| Damage::Bytes(at, edits)),
        (any::<Index>(), any::<Index>(), "[a-z.]{0,12}")
            .prop_map(|(r, i, name)| Damage::Rename(r, i, name)),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(r, i, t)| Damage::Retype(r, i, t)),
        (
            any::<Index>(),
            prop::sample::select(vec![
                "settings",
                "egress",
                "backend.demo.svc.cluster.local",
                "x"
            ])
        )
            .prop_map(|(r, name)| Damage::Remove(r, name.to_owned())),
    ];
    fuzz(
        "stream_damaged_responses",
        128,
        prop::collection::vec(damage, 1..4),
        |damages| {
            let mut responses: Vec<Vec<u8>> = valid.iter().map(Message::encode_to_vec).collect();
            for damage in &damages {
                let at = match damage {
                    Damage::Bytes(at, _)
                    | Damage::Rename(at, _, _)
                    | Damage::Retype(at, _, _)
                    | Damage::Remove(at, _) => at.index(responses.len()),
                };
                let Ok(mut response) = DeltaDiscoveryResponse::decode(&responses[at][..]) else {
                    continue;
                };
                match damage {
                    Damage::Bytes(_, edits) => {
                        apply_byte_edits(&mut responses[at], edits);
                        continue;
                    }
                    Damage::Rename(_, i, name) if !response.resources.is_empty() => {
                        let i = i.index(response.resources.len());
                        response.resources[i].name = name.clone();
                    }
                    Damage::Retype(_, i, t) if !response.resources.is_empty() => {
                        let i = i.index(response.resources.len());
                        if let Some(any) = response.resources[i].resource.as_mut() {
                            any.type_url = t.get(&TYPE_URLS).to_string();
                        }
                    }
                    Damage::Remove(_, name) => response.removed_resources.push(name.clone()),
                    _ => {}
                }
                responses[at] = response.encode_to_vec();
            }
            let mut held = Resources::new();
            for bytes in &responses {
                if let Ok(response) = DeltaDiscoveryResponse::decode(&bytes[..]) {
                    fold(&mut held, &response);
                }
            }
            assemble_and_compile(&held);
            Ok(())
        },
    );
}

// ---- The stream's requests, against a real control plane ----

mod push_server {
    use super::*;
    use futures::future::BoxFuture;
    use skein::controlplane::identity::{Authenticate, AuthenticatedProxy, AuthnError};
    use skein::controlplane::push::{ConfigSource, ProxyIdentity, PushServer};
    use skein::xds::discovery::Status as NackStatus;
    use skein::xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use tokio::sync::watch;

    pub const TOKEN: &str = "web-1-token";
    /// Names the server's runtime threads, so the panic hook can tell its panics apart.
    const THREAD_NAME: &str = "fuzz-push-server";

    /// Panics on the server's threads: a panicking stream task does not fail the client.
    pub static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

    struct Source {
        config: ProxyConfig,
        changes: watch::Sender<u64>,
    }

    impl ConfigSource for Source {
        fn config_for(&self, _: &ProxyIdentity) -> ProxyConfig {
            self.config.clone()
        }
        fn changes(&self) -> watch::Receiver<u64> {
            self.changes.subscribe()
        }
    }

    /// `TOKEN` is pod demo/web-1; every other token is refused.
    struct OneToken;

    impl Authenticate for OneToken {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<AuthenticatedProxy, AuthnError>> {
            let result = if token == TOKEN {
                Ok(AuthenticatedProxy {
                    namespace: "demo".to_owned(),
                    service_account: "web".to_owned(),
                    pod: "web-1".to_owned(),
                    pod_uid: "uid-web-1".to_owned(),
                })
            } else {
                Err(AuthnError::Refused("unknown token".to_owned()))
            };
            Box::pin(async move { result })
        }
    }

    pub struct Server {
        pub runtime: tokio::runtime::Runtime,
        pub channel: tonic::transport::Channel,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    pub fn start() -> Server {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(THREAD_NAME) {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()
            .expect("a runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let channel = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            let source = Arc::new(Source {
                config: rich_config(),
                changes: watch::channel(0).0,
            });
            let mut registry = prometheus_client::registry::Registry::default();
            let server = PushServer::new(source, Arc::new(OneToken), &mut registry);
            tokio::spawn(server.serve_with_listener(listener, async move {
                let _ = stopped.await;
            }));
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("an endpoint")
                .connect_lazy()
        });
        Server {
            runtime,
            channel,
            _stop: stop,
        }
    }

    pub fn valid_node() -> Node {
        Node {
            id: "web-1.demo".to_owned(),
            pod: "web-1".to_owned(),
            namespace: "demo".to_owned(),
            ip: "10.1.0.7".to_owned(),
        }
    }

    pub fn subscription(type_url: &str, node: Option<Node>) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node,
            type_url: type_url.to_owned(),
            resource_names_subscribe: vec!["*".to_owned()],
            ..Default::default()
        }
    }

    /// Sends `requests` on one stream with `token`, then closes it and reads every response
    /// until the server ends the stream (bounded, so a hang fails instead of blocking).
    pub async fn exchange(
        channel: tonic::transport::Channel,
        token: &str,
        requests: Vec<DeltaDiscoveryRequest>,
    ) -> Result<Vec<DeltaDiscoveryResponse>, String> {
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let mut request = tonic::Request::new(futures::stream::iter(requests));
        if skein::proxy::identity::authorize(&mut request, token).is_err() {
            return Ok(Vec::new());
        }
        let exchange = async {
            let mut responses = match client.delta_aggregated_resources(request).await {
                Ok(responses) => responses.into_inner(),
                Err(_) => return Vec::new(),
            };
            let mut received = Vec::new();
            while let Ok(Some(response)) = responses.message().await {
                received.push(response);
            }
            received
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .map_err(|_| "the server neither answered nor ended the stream".to_owned())
    }

    /// A well-behaved proxy: subscribes to every type, reads the first push, ACKs it, and
    /// checks it assembles the configuration the source gives.
    pub async fn sync(channel: tonic::transport::Channel) -> Result<(), String> {
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        for (i, type_url) in TYPE_URLS.iter().enumerate() {
            let node = (i == 0).then(valid_node);
            sender
                .send(subscription(type_url, node))
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut request = tonic::Request::new(tokio_stream_from(receiver));
        skein::proxy::identity::authorize(&mut request, TOKEN).map_err(|e| e.to_string())?;
        let sync = async {
            let mut responses = client
                .delta_aggregated_resources(request)
                .await
                .map_err(|status| format!("a valid proxy was refused: {status}"))?
                .into_inner();
            let mut held = Resources::new();
            for _ in TYPE_URLS {
                let response = responses
                    .message()
                    .await
                    .map_err(|status| format!("the stream broke: {status}"))?
                    .ok_or("the stream ended before the first push")?;
                fold(&mut held, &response);
                let ack = DeltaDiscoveryRequest {
                    type_url: response.type_url.clone(),
                    response_nonce: response.nonce.clone(),
                    ..Default::default()
                };
                sender.send(ack).await.map_err(|e| e.to_string())?;
            }
            let config = resources::assemble(&held).map_err(|err| err.to_string())?;
            if config != sorted(rich_config()) {
                return Err("a valid proxy assembled another configuration".to_owned());
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(20), sync)
            .await
            .map_err(|_| "a valid proxy did not sync in 20s".to_owned())?
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> + Send + 'static {
        futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }

    pub fn nack(message: String) -> NackStatus {
        NackStatus { code: 3, message }
    }
}

fn discovery_request() -> impl Strategy<Value = DeltaDiscoveryRequest> {
    let type_url = prop_oneof![
        3 => prop::sample::select(TYPE_URLS.to_vec()).prop_map(str::to_owned),
        1 => "\\PC{0,40}",
    ];
    let names = prop::collection::vec(
        prop_oneof![
            Just("*".to_owned()),
            Just("settings".to_owned()),
            "\\PC{0,20}"
        ],
        0..4,
    );
    let versions = prop::collection::btree_map(
        prop_oneof![
            Just("settings".to_owned()),
            Just("egress".to_owned()),
            Just("backend.demo.svc.cluster.local".to_owned()),
            "\\PC{0,20}",
        ],
        prop_oneof![Just(String::new()), "[0-9a-f]{32}", "\\PC{0,20}"],
        0..6,
    );
    let nonce = prop_oneof![
        2 => Just(String::new()),
        2 => (1u8..4, 1u8..8).prop_map(|(stream, n)| format!("{stream}-{n}")),
        1 => "\\PC{0,20}",
    ];
    let error = prop::option::of(
        prop_oneof![Just(String::new()), "\\PC{0,64}", Just("x".repeat(70_000))]
            .prop_map(push_server::nack),
    );
    let node = prop::option::weighted(
        0.2,
        prop_oneof![
            Just(push_server::valid_node()),
            (
                "\\PC{0,12}",
                "\\PC{0,12}",
                "\\PC{0,12}",
                prop_oneof![Just("10.1.0.7".to_owned()), "\\PC{0,16}"]
            )
                .prop_map(|(id, pod, namespace, ip)| Node {
                    id,
                    pod,
                    namespace,
                    ip
                }),
        ],
    );
    (type_url, names.clone(), names, versions, nonce, error, node).prop_map(
        |(type_url, subscribe, unsubscribe, versions, nonce, error, node)| DeltaDiscoveryRequest {
            node,
            type_url,
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: versions,
            response_nonce: nonce,
            error_detail: error,
        },
    )
}

/// Any sequence of requests, from a pod with a valid token or not, ends in responses the proxy
/// can read or a refusal; the server never panics or hangs and keeps syncing a real proxy.
#[test]
fn stream_requests_the_control_plane_receives() {
    let server = push_server::start();
    let sync = |server: &push_server::Server| {
        server
            .runtime
            .block_on(push_server::sync(server.channel.clone()))
    };
    sync(&server).expect("a valid proxy syncs before fuzzing");

    let first = prop_oneof![
        2 => Just(None),
        1 => discovery_request().prop_map(Some),
    ];
    let token = prop_oneof![8 => Just(push_server::TOKEN.to_owned()), 1 => "\\PC{0,20}"];
    let decoded = prop::collection::vec(bytes(120), 0..3);
    let strategy = (
        first,
        prop::collection::vec(discovery_request(), 0..8),
        decoded,
        token,
    );
    fuzz(
        "stream_requests",
        16,
        strategy,
        |(first, more, raw, token)| {
            // A valid opening (unless the case brings its own) so the later requests reach the
            // stream's state instead of being refused at the door.
            let mut requests = match first {
                Some(first) => vec![first],
                None => TYPE_URLS
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        push_server::subscription(t, (i == 0).then(push_server::valid_node))
                    })
                    .collect(),
            };
            requests.extend(more);
            // Random bytes that happen to decode, as the server's codec would decode them.
            requests.extend(
                raw.iter()
                    .filter_map(|b| DeltaDiscoveryRequest::decode(&b[..]).ok()),
            );
            let responses = server
                .runtime
                .block_on(push_server::exchange(
                    server.channel.clone(),
                    &token,
                    requests,
                ))
                .map_err(TestCaseError::fail)?;
            for response in &responses {
                prop_assert!(resources::known_type(&response.type_url).is_some());
                prop_assert!(!response.nonce.is_empty());
            }
            prop_assert_eq!(
                push_server::SERVER_PANICS.load(Ordering::SeqCst),
                0,
                "the server panicked"
            );
            sync(&server).map_err(TestCaseError::fail)?;
            Ok(())
        },
    );
    assert_eq!(
        push_server::SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
}

// ---- Regressions: inputs the targets found ----

/// The injection patch applied to `pod` as the apiserver applies it, or the denial's message.
fn inject_and_apply(pod: &Value) -> Result<Value, String> {
    let body = serde_json::to_vec(&pod_review(pod.clone())).expect("JSON");
    let request = parse_review(&body).expect("a review");
    let (response, outcome) = respond(&request, &inject_config(), None);
    if !response.allowed {
        return Err(response.result.message);
    }
    let patch = response
        .patch
        .unwrap_or_else(|| panic!("no patch: {outcome:?}"));
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON patch");
    let mut injected = pod.clone();
    json_patch::patch(&mut injected, &patch).map_err(|err| format!("not applicable: {err}"))?;
    Ok(injected)
}

/// Found by `admission_injection`: a pod whose init container has no `name` (input: the seed pod
/// without `/spec/initContainers/0/name`). The patch is the difference between typed pods, and
/// the typed pod had filled in `""`, so the patch replaced a field the object does not have: the
/// apiserver could not apply it and failed the request with an opaque error. Such a pod is now
/// refused, saying why, and a valid pod's patch still applies.
#[test]
fn regression_a_container_without_a_name_is_refused_not_given_a_broken_patch() {
    let injected = inject_and_apply(&seed_pod()).expect("the seed pod is injected");
    assert_eq!(injected["spec"]["initContainers"][0]["name"], "skein-init");

    let mut pod = seed_pod();
    pod["spec"]["initContainers"][0]
        .as_object_mut()
        .expect("a container")
        .remove("name");
    let refused = inject_and_apply(&pod).expect_err("refused");
    assert!(refused.contains("not a valid Pod"), "{refused}");

    // Whichever container lacks its name: a patch that applies, or a refusal; never a patch the
    // apiserver cannot apply.
    for container in ["/spec/containers/0", "/spec/containers/1"] {
        let mut pod = seed_pod();
        pod.pointer_mut(container)
            .and_then(Value::as_object_mut)
            .expect("a container")
            .remove("name");
        if let Err(message) = inject_and_apply(&pod) {
            assert!(
                message.contains("not a valid Pod"),
                "{container}: {message}"
            );
        }
    }
}
