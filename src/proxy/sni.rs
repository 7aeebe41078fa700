//! The server name (SNI) of a TLS ClientHello, read without terminating TLS: outbound TLS is
//! routed and checked against egress rules by the name the client asked for.
//!
//! Only the first handshake message is looked at, reassembled from as many handshake records
//! as it spans. Every read is bounds-checked: the bytes come from an untrusted client.

use std::borrow::Cow;

/// TLS record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_SERVER_NAME: u16 = 0x0000;
const NAME_TYPE_HOST_NAME: u8 = 0x00;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest plaintext record fragment (RFC 8446 §5.1).
const MAX_FRAGMENT_LEN: usize = 1 << 14;
/// Longest DNS name in its dotted text form.
const MAX_HOST_NAME_LEN: usize = 253;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The bytes so far are the start of a ClientHello; read more and ask again.
    #[error("incomplete TLS ClientHello")]
    Incomplete,
    #[error("not a TLS ClientHello")]
    NotClientHello,
    #[error("malformed TLS ClientHello: {0}")]
    Malformed(&'static str),
}

/// The `host_name` of the ClientHello's `server_name` extension that starts `buf` (lowercased,
/// without a trailing dot), or `None` when the client sent none.
pub fn server_name(buf: &[u8]) -> Result<Option<String>, SniError> {
    let body = client_hello_body(buf)?;
    parse_client_hello(&body)
}

/// Reassembles the first handshake message from the records at the start of `buf` and returns
/// its body. Bytes that already rule out a ClientHello are judged before asking for more.
fn client_hello_body(buf: &[u8]) -> Result<Cow<'_, [u8]>, SniError> {
    let mut rest = buf;
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut first_record = true;
    loop {
        match rest.first() {
            None => return Err(SniError::Incomplete),
            Some(&CONTENT_HANDSHAKE) => {}
            Some(_) if first_record => return Err(SniError::NotClientHello),
            Some(_) => {
                return Err(SniError::Malformed(
                    "ClientHello interrupted by a non-handshake record",
                ));
            }
        }
        if first_record {
            if rest.get(1).is_some_and(|&major| major != 0x03) {
                return Err(SniError::NotClientHello);
            }
            if rest.get(2).is_some_and(|&minor| minor > 0x04) {
                return Err(SniError::NotClientHello);
            }
        }
        let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
            return Err(SniError::Incomplete);
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(SniError::Malformed("empty handshake record"));
        }
        if len > MAX_FRAGMENT_LEN {
            return Err(SniError::Malformed("record longer than 16 KiB"));
        }
        let payload = &rest[RECORD_HEADER_LEN..];
        let fragment = &payload[..len.min(payload.len())];
        if message.is_empty() {
            message = Cow::Borrowed(fragment);
        } else {
            message.to_mut().extend_from_slice(fragment);
        }

        if message
            .first()
            .is_some_and(|&ty| ty != HANDSHAKE_CLIENT_HELLO)
        {
            return Err(SniError::NotClientHello);
        }
        if let Some(header) = message.get(..HANDSHAKE_HEADER_LEN) {
            let body_len =
                usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
            let end = HANDSHAKE_HEADER_LEN + body_len;
            if message.len() >= end {
                return Ok(match message {
                    Cow::Borrowed(bytes) => Cow::Borrowed(&bytes[HANDSHAKE_HEADER_LEN..end]),
                    Cow::Owned(mut bytes) => {
                        bytes.truncate(end);
                        bytes.drain(..HANDSHAKE_HEADER_LEN);
                        Cow::Owned(bytes)
                    }
                });
            }
        }
        if fragment.len() < len {
            return Err(SniError::Incomplete);
        }
        rest = &payload[len..];
        first_record = false;
    }
}

/// The ClientHello body (RFC 8446 §4.1.2; TLS 1.2 and earlier may omit the extensions).
fn parse_client_hello(body: &[u8]) -> Result<Option<String>, SniError> {
    let mut hello = Reader(body);
    hello.take(2, "truncated legacy_version")?;
    hello.take(32, "truncated random")?;
    if hello.vec8("truncated session id")?.len() > 32 {
        return Err(SniError::Malformed("session id longer than 32 bytes"));
    }
    let suites = hello.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(SniError::Malformed("invalid cipher suite list"));
    }
    if hello.vec8("truncated compression methods")?.is_empty() {
        return Err(SniError::Malformed("no compression method"));
    }
    if hello.is_empty() {
        return Ok(None);
    }
    let mut extensions = Reader(hello.vec16("truncated extensions")?);
    if !hello.is_empty() {
        return Err(SniError::Malformed("bytes after the extensions"));
    }

    let mut name = None;
    let mut seen = false;
    while !extensions.is_empty() {
        let ty = extensions.u16("truncated extension type")?;
        let data = extensions.vec16("truncated extension")?;
        if ty == EXTENSION_SERVER_NAME {
            if seen {
                return Err(SniError::Malformed("duplicate server_name extension"));
            }
            seen = true;
            name = parse_server_name(data)?;
        }
    }
    Ok(name)
}

/// The `server_name` extension's data (RFC 6066 §3).
fn parse_server_name(data: &[u8]) -> Result<Option<String>, SniError> {
    let mut extension = Reader(data);
    let mut list = Reader(extension.vec16("truncated server name list")?);
    if !extension.is_empty() {
        return Err(SniError::Malformed("bytes after the server name list"));
    }
    if list.is_empty() {
        return Err(SniError::Malformed("empty server name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let ty = list.u8("truncated server name type")?;
        let name = list.vec16("truncated server name")?;
        if ty == NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(SniError::Malformed("more than one host_name"));
            }
            host = Some(host_name(name)?);
        }
    }
    Ok(host)
}

/// Clients put a DNS name here; anything else is refused rather than passed on to routing.
fn host_name(name: &[u8]) -> Result<String, SniError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(SniError::Malformed("empty host_name"));
    }
    if name.len() > MAX_HOST_NAME_LEN {
        return Err(SniError::Malformed("host_name longer than 253 bytes"));
    }
    if !name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(SniError::Malformed("host_name is not an ASCII DNS name"));
    }
    if name.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return Err(SniError::Malformed("host_name has an empty label"));
    }
    Ok(name
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// A cursor whose every read fails with `Malformed(what)` instead of going past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or(SniError::Malformed(what))?;
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }
}

/// A real ClientHello, as rustls writes it, for the tests of this module and of `detect`.
#[cfg(test)]
pub(crate) fn test_client_hello(server: &str, sni: bool) -> Vec<u8> {
    use std::sync::Arc;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni;
    let name = rustls::pki_types::ServerName::try_from(server.to_owned()).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Re-frames the handshake message of `hello` into records of at most `size` bytes.
    fn split_records(hello: &[u8], size: usize) -> Vec<u8> {
        let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        let message = &hello[5..5 + len];
        let mut out = Vec::new();
        for chunk in message.chunks(size) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn reads_the_server_name_of_a_real_client_hello() {
        let hello = test_client_hello("api.example.com", true);
        assert_eq!(server_name(&hello), Ok(Some("api.example.com".to_owned())));
    }

    #[test]
    fn lowercases_the_server_name() {
        let hello = test_client_hello("API.Example.COM", true);
        assert_eq!(server_name(&hello), Ok(Some("api.example.com".to_owned())));
    }

    #[test]
    fn no_sni_is_none() {
        let hello = test_client_hello("api.example.com", false);
        assert_eq!(server_name(&hello), Ok(None));
        // rustls never sends an IP address as SNI either.
        let hello = test_client_hello("192.0.2.7", true);
        assert_eq!(server_name(&hello), Ok(None));
    }

    #[test]
    fn client_hello_spanning_several_records() {
        let hello = test_client_hello("api.example.com", true);
        for size in [1, 2, 3, 7, 100, 512] {
            let split = split_records(&hello, size);
            assert_eq!(
                server_name(&split),
                Ok(Some("api.example.com".to_owned())),
                "records of {size} bytes"
            );
            assert_eq!(
                server_name(&split[..split.len() - 1]),
                Err(SniError::Incomplete)
            );
        }
    }

    #[test]
    fn bytes_after_the_client_hello_are_ignored() {
        let mut hello = test_client_hello("api.example.com", true);
        hello.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(server_name(&hello), Ok(Some("api.example.com".to_owned())));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let hello = test_client_hello("api.example.com", true);
        for end in 0..hello.len() {
            assert_eq!(
                server_name(&hello[..end]),
                Err(SniError::Incomplete),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn other_bytes_are_not_a_client_hello() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x17\x03\x03\x00\x10",
            b"\x16\x02",
            b"\x16\x03\x05",
            // A ServerHello (handshake type 2).
            b"\x16\x03\x03\x00\x30\x02",
        ] {
            assert_eq!(
                server_name(bytes),
                Err(SniError::NotClientHello),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn malformed_client_hellos() {
        let hello = test_client_hello("api.example.com", true);
        // An empty record, and one longer than TLS allows.
        assert!(matches!(
            server_name(b"\x16\x03\x01\x00\x00"),
            Err(SniError::Malformed(_))
        ));
        assert!(matches!(
            server_name(b"\x16\x03\x01\x40\x01\x01"),
            Err(SniError::Malformed(_))
        ));
        // A second record of another content type in the middle of the message.
        let mut split = split_records(&hello, 100);
        split[105] = 0x17;
        assert!(matches!(server_name(&split), Err(SniError::Malformed(_))));
        // A message whose declared length is shorter than its fields.
        let mut short = hello.clone();
        short[6..9].copy_from_slice(&[0, 0, 10]);
        assert!(matches!(server_name(&short), Err(SniError::Malformed(_))));
    }

    /// Builds a ClientHello record around the given extensions.
    fn hello_with_extensions(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0; 32]);
        body.push(0);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
        let mut message = vec![0x01, 0, 0, 0];
        message[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
        message.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(message.len() as u16).to_be_bytes());
        record.extend_from_slice(&message);
        record
    }

    fn sni_extension(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (ty, name) in names {
            list.push(*ty);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut ext = vec![0x00, 0x00];
        ext.extend_from_slice(&(list.len() as u16 + 2).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        ext
    }

    #[test]
    fn host_name_checks() {
        let sni = |name: &[u8]| server_name(&hello_with_extensions(&sni_extension(&[(0, name)])));
        assert_eq!(sni(b"a.example.com."), Ok(Some("a.example.com".to_owned())));
        assert_eq!(
            sni(b"_svc.Example.com"),
            Ok(Some("_svc.example.com".to_owned()))
        );
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b"a b",
            b"caf\xc3\xa9.example",
            b"a/b",
            &[b'a'; 254],
        ] {
            assert!(matches!(sni(bad), Err(SniError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn server_name_list_checks() {
        // Only an unknown name type: no host name.
        let other = sni_extension(&[(7, b"x")]);
        assert_eq!(server_name(&hello_with_extensions(&other)), Ok(None));
        let two = sni_extension(&[(0, b"a.example"), (0, b"b.example")]);
        assert!(matches!(
            server_name(&hello_with_extensions(&two)),
            Err(SniError::Malformed(_))
        ));
        let mut twice = sni_extension(&[(0, b"a.example")]);
        twice.extend_from_slice(&sni_extension(&[(0, b"a.example")]));
        assert!(matches!(
            server_name(&hello_with_extensions(&twice)),
            Err(SniError::Malformed(_))
        ));
        let empty_list = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00];
        assert!(matches!(
            server_name(&hello_with_extensions(&empty_list)),
            Err(SniError::Malformed(_))
        ));
        assert_eq!(server_name(&hello_with_extensions(&[])), Ok(None));
    }

    #[test]
    fn never_panics_on_random_or_mangled_input() {
        let hello = test_client_hello("api.example.com", true);
        let mut rng = fastrand::Rng::with_seed(0x5EED_5141);
        for _ in 0..3000 {
            let len = rng.usize(0..600);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Half of them look like a handshake record, so the parser gets past the header.
            if rng.bool() && bytes.len() >= 6 {
                bytes[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
                bytes[5] = 0x01;
            }
            let _ = server_name(&bytes);
        }
        for _ in 0..3000 {
            let mut bytes = hello.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = rng.u8(..);
            }
            bytes.truncate(rng.usize(..=bytes.len()));
            let _ = server_name(&bytes);
        }
    }
}
