//! The name a connection asks for, read from its first bytes: the server
//! name (SNI) of a TLS `ClientHello`, or the `Host` header of an HTTP/1
//! request. Everything here reads bytes a guest sent, so every length is
//! checked and nothing panics on any input.

/// What the first bytes of a connection say so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A TLS `ClientHello` or HTTP request naming this host (lower case, no
    /// trailing dot or port).
    Name(String),
    /// A complete `ClientHello` or request head that names no host, or
    /// bytes that are neither: decide by address.
    Nameless,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// The most bytes read before giving up on finding a name: a `ClientHello`
/// with post-quantum key shares runs past 1.5 KiB, and request heads are
/// rarely over 8 KiB.
pub(crate) const MAX_SNIFF: usize = 16 << 10;

/// Looks at the first bytes of a connection.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    match bytes.first() {
        None => Sniffed::NeedMore,
        // A TLS handshake record.
        Some(0x16) => tls_server_name(bytes),
        Some(_) => http_host(bytes),
    }
}

/// A big-endian reader that fails instead of running off the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A block with a length prefix of `len_bytes` bytes.
    fn block(&mut self, len_bytes: usize) -> Option<Reader<'a>> {
        let len = match len_bytes {
            1 => self.u8()?,
            2 => self.u16()?,
            _ => self.u24()?,
        };
        self.take(len).map(|bytes| Reader { bytes })
    }
}

/// The server name of a `ClientHello`, which may span several TLS records
/// (each record's payload is the next piece of the handshake message).
fn tls_server_name(bytes: &[u8]) -> Sniffed {
    // Reassemble the handshake bytes from the records present so far.
    let mut handshake = Vec::new();
    let mut records = Reader { bytes };
    while let Some(header) = records.take(5) {
        if header[0] != 0x16 {
            return Sniffed::Nameless;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        match records.take(len) {
            Some(payload) => handshake.extend_from_slice(payload),
            None => {
                handshake.extend_from_slice(records.bytes);
                break;
            }
        }
    }
    let mut r = Reader { bytes: &handshake };
    let (Some(kind), Some(len)) = (r.u8(), r.u24()) else {
        return Sniffed::NeedMore;
    };
    if kind != 1 {
        return Sniffed::Nameless; // not a `ClientHello`
    }
    let Some(body) = r.take(len) else {
        return if len > MAX_SNIFF {
            Sniffed::Nameless
        } else {
            Sniffed::NeedMore
        };
    };
    match client_hello_server_name(Reader { bytes: body }) {
        Some(name) => Sniffed::Name(name),
        None => Sniffed::Nameless,
    }
}

/// The `server_name` extension's host name in a whole `ClientHello` body.
fn client_hello_server_name(mut hello: Reader<'_>) -> Option<String> {
    hello.take(2 + 32)?; // version, random
    hello.block(1)?; // session id
    hello.block(2)?; // cipher suites
    hello.block(1)?; // compression methods
    let mut extensions = hello.block(2)?;
    while let Some(kind) = extensions.u16() {
        let mut data = extensions.block(2)?;
        if kind != 0 {
            continue;
        }
        let mut names = data.block(2)?;
        while let Some(name_type) = names.u8() {
            let name = names.block(2)?;
            if name_type == 0 {
                return host_name(name.bytes);
            }
        }
        return None;
    }
    None
}

/// The `Host` of an HTTP/1 request head.
fn http_host(bytes: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if bytes.len() < MAX_SNIFF => return Sniffed::NeedMore,
        _ => return Sniffed::Nameless,
    }
    let host = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    match host.and_then(|h| host_name(strip_port(h))) {
        Some(name) => Sniffed::Name(name),
        None => Sniffed::Nameless,
    }
}

/// `example.com:8080` without its port (an IPv6 literal is left whole,
/// and then refused as a name).
fn strip_port(host: &[u8]) -> &[u8] {
    match host.iter().rposition(|b| *b == b':') {
        Some(i) if !host.starts_with(b"[") => &host[..i],
        _ => host,
    }
}

/// A host name as a policy compares it: ASCII, lower case, no trailing
/// dot; `None` for anything that is not a DNS name (an IP literal among
/// them, which names no domain).
fn host_name(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?.to_ascii_lowercase();
    let text = text.strip_suffix('.').unwrap_or(&text);
    let valid = text.parse::<std::net::Ipv4Addr>().is_err()
        && crate::vocab::DomainPattern::is_name(text);
    valid.then(|| text.to_owned())
}

#[cfg(any(test, feature = "test-internals"))]
pub mod testing {
    //! Building first bytes that name a host, for tests and benchmarks.

    /// A minimal TLS 1.2-style `ClientHello` record naming `name` (no SNI
    /// when `None`).
    pub fn client_hello(name: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = name {
            let name = name.as_bytes();
            let mut list = vec![0u8];
            list.extend_from_slice(&u16_be(name.len()));
            list.extend_from_slice(name);
            let mut data = u16_be(list.len()).to_vec();
            data.extend_from_slice(&list);
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&u16_be(data.len()));
            ext.extend_from_slice(&data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&u16_be(ext.len()));
        body.extend_from_slice(&ext);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&u24_be(body.len()));
        handshake.extend_from_slice(&body);
        let mut record = vec![0x16, 3, 1];
        record.extend_from_slice(&u16_be(handshake.len()));
        record.extend_from_slice(&handshake);
        record
    }

    fn u16_be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
    }

    fn u24_be(n: usize) -> [u8; 3] {
        let b = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
        [b[1], b[2], b[3]]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::client_hello;
    use super::*;

    #[test]
    fn the_server_name_of_a_client_hello_is_found_even_split_across_records() {
        let hello = client_hello(Some("Files.PyPI.org."));
        assert_eq!(sniff(&hello), Sniffed::Name("files.pypi.org".into()));
        assert_eq!(sniff(&client_hello(None)), Sniffed::Nameless);
        // Every cut short of the whole record asks for more.
        for cut in 1..hello.len() {
            assert_eq!(sniff(&hello[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        // The same handshake in two records.
        let handshake = &hello[5..];
        let (a, b) = handshake.split_at(20);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 3, 1]);
            split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(sniff(&split), Sniffed::Name("files.pypi.org".into()));
        // An IP literal names no domain.
        assert_eq!(sniff(&client_hello(Some("203.0.113.9"))), Sniffed::Nameless);
    }

    #[test]
    fn the_host_of_an_http_request_is_found_without_its_port() {
        let request = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Example.com:8080\r\n\r\n";
        assert_eq!(sniff(request), Sniffed::Name("example.com".into()));
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: exa"), Sniffed::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n\r\n"), Sniffed::Nameless);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.6\r\n"), Sniffed::Nameless);
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            Sniffed::Nameless
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = sniff(&bytes);
            let mut tls = vec![0x16, 3, 1];
            tls.extend_from_slice(&bytes);
            let _ = sniff(&tls);
        }

        #[test]
        fn mangled_client_hellos_are_read_without_a_panic(
            at in 0usize..120,
            byte in proptest::num::u8::ANY,
        ) {
            let mut hello = client_hello(Some("example.com"));
            let i = at % hello.len();
            hello[i] = byte;
            let _ = sniff(&hello);
        }
    }
}
