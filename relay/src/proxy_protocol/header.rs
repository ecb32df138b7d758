//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2): how a TCP
//! load balancer tells the server who the client is, in front of the client's own bytes.
//!
//! Pure decoding, no IO and nothing but `std`: [`decode`] looks at the bytes received so far
//! and answers that a header is complete (with its length: what follows belongs to the
//! client, TLS or HTTP, and is handed on untouched), that more bytes are needed, or that these
//! bytes cannot start a valid header. It never panics and never needs more than [`MAX_LEN`]
//! bytes to answer. The socket side is in the parent module; the fuzz target `proxy_header`
//! compiles this very file, so the fuzzer runs the relay's own code.
//!
//! Version 1 (text), one line of at most [`V1_MAX_LEN`] bytes with its CRLF:
//!
//! ```text
//! PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n
//! PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n
//! PROXY UNKNOWN\r\n                 (anything may follow UNKNOWN, up to the CRLF)
//! ```
//!
//! Version 2 (binary): the 12-byte [`V2_SIGNATURE`], a byte of version (2) and command (0
//! LOCAL, 1 PROXY), a byte of address family (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport
//! (0 UNSPEC, 1 STREAM, 2 DGRAM), a big-endian `u16` length, then that many bytes: the
//! addresses (INET: source, destination, source port, destination port in 4 + 4 + 2 + 2
//! bytes; INET6: 16 + 16 + 2 + 2) and type-length-value extensions, which are skipped. The
//! length is refused beyond [`V2_MAX_PAYLOAD`].
//!
//! Only TCP over IPv4 or IPv6 names a client. v1 `UNKNOWN`, v2 `LOCAL` (the proxy's own
//! connections: health checks) and a v2 `PROXY` of another family or transport (UNSPEC, UNIX,
//! UDP) decode to [`ProxyHeader::Local`]: the connection's peer address stands, as the
//! specification lets a receiver choose.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// What a version 1 header starts with.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// The longest version 1 header, CRLF included (`PROXY UNKNOWN` with two full IPv6
/// addresses and two five-digit ports).
pub const V1_MAX_LEN: usize = 107;

/// What a version 2 header starts with.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a version 2 header: signature, version and command, family and
/// transport, length.
pub const V2_FIXED_LEN: usize = 16;

/// The longest version 2 payload (addresses and extensions) accepted. IPv6 addresses take 36
/// bytes; the rest leaves room for the extensions load balancers add (TLS details, a unique
/// id, a cloud endpoint id) while bounding what one connection may make the relay buffer.
pub const V2_MAX_PAYLOAD: usize = 2048;

/// The most bytes [`decode`] needs to answer.
pub const MAX_LEN: usize = V2_FIXED_LEN + V2_MAX_PAYLOAD;

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// No client address: v1 `UNKNOWN`, v2 `LOCAL`, or a v2 family other than TCP over IPv4
    /// or IPv6. The connection's peer address stands.
    Local,
    /// A client's TCP connection to the proxy.
    Proxied {
        /// The client, as the proxy saw it.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
}

impl ProxyHeader {
    /// The client's address: the source the header names, or `peer` when it names none.
    pub fn client(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            Self::Local => peer,
            Self::Proxied { source, .. } => *source,
        }
    }
}

/// The answer of [`decode`] when the bytes so far are not wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The bytes so far start a header; more are needed.
    Incomplete,
    /// A whole header, `len` bytes long; whatever follows is the client's.
    Complete {
        /// What it says.
        header: ProxyHeader,
        /// Its length in bytes.
        len: usize,
    },
}

/// Why bytes are not a PROXY protocol header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// They start neither as version 1 nor as version 2: the peer sent no header (an HTTP
    /// request or a TLS hello, most likely).
    Missing,
    /// A version 1 line with no CRLF within [`V1_MAX_LEN`] bytes, or a version 2 length
    /// beyond [`V2_MAX_PAYLOAD`].
    TooLong,
    /// The header breaks the format; the text says where.
    Invalid(&'static str),
}

impl HeaderError {
    /// A short stable name, for a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::TooLong => "too_long",
            Self::Invalid(_) => "invalid",
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no PROXY protocol header"),
            Self::TooLong => f.write_str("PROXY protocol header too long"),
            Self::Invalid(what) => write!(f, "invalid PROXY protocol header: {what}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Decodes the header at the start of `buf`, the bytes received so far.
///
/// An error is final: no further bytes can make these valid. `Incomplete` is answered only
/// while `buf` is shorter than [`MAX_LEN`].
pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    match buf.first() {
        None => Ok(Decoded::Incomplete),
        Some(&b'P') => decode_v1(buf),
        Some(&b'\r') => decode_v2(buf),
        Some(_) => Err(HeaderError::Missing),
    }
}

fn decode_v1(buf: &[u8]) -> Result<Decoded, HeaderError> {
    if !starts_like(buf, V1_PREFIX) {
        return Err(HeaderError::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(HeaderError::TooLong)
        } else {
            Ok(Decoded::Incomplete)
        };
    };
    // The prefix holds no LF, so the line is at least as long as it.
    let line = window
        .get(V1_PREFIX.len()..lf)
        .and_then(|line| line.strip_suffix(b"\r"))
        .ok_or(HeaderError::Invalid("v1: the line does not end with CRLF"))?;
    Ok(Decoded::Complete {
        header: v1_fields(line)?,
        len: lf + 1,
    })
}

/// The fields after `PROXY `, CRLF removed.
fn v1_fields(line: &[u8]) -> Result<ProxyHeader, HeaderError> {
    // The receiver must ignore whatever follows UNKNOWN.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::Local);
    }
    let invalid = HeaderError::Invalid;
    let line = std::str::from_utf8(line).map_err(|_| invalid("v1: not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let [protocol, source, destination, source_port, destination_port] = fields[..] else {
        return Err(invalid(
            "v1: expected a protocol, two addresses and two ports, one space apart",
        ));
    };
    let (source, destination) = match protocol {
        "TCP4" => (
            IpAddr::V4(
                source
                    .parse()
                    .map_err(|_| invalid("v1: bad IPv4 address"))?,
            ),
            IpAddr::V4(
                destination
                    .parse()
                    .map_err(|_| invalid("v1: bad IPv4 address"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(
                source
                    .parse()
                    .map_err(|_| invalid("v1: bad IPv6 address"))?,
            ),
            IpAddr::V6(
                destination
                    .parse()
                    .map_err(|_| invalid("v1: bad IPv6 address"))?,
            ),
        ),
        _ => return Err(invalid("v1: the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(source, v1_port(source_port)?),
        destination: SocketAddr::new(destination, v1_port(destination_port)?),
    })
}

/// A port: one to five decimal digits, at most 65535 (no sign, no spaces).
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let bad = HeaderError::Invalid("v1: bad port");
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

fn decode_v2(buf: &[u8]) -> Result<Decoded, HeaderError> {
    if !starts_like(buf, V2_SIGNATURE) {
        return Err(HeaderError::Missing);
    }
    let Some((fixed, _)) = buf.split_first_chunk::<V2_FIXED_LEN>() else {
        return Ok(Decoded::Incomplete);
    };
    let [.., version_command, family_transport, len_high, len_low] = *fixed;
    if version_command >> 4 != 2 {
        return Err(HeaderError::Invalid("v2: the version is not 2"));
    }
    let proxied = match version_command & 0x0f {
        0x0 => false,
        0x1 => true,
        _ => {
            return Err(HeaderError::Invalid(
                "v2: the command is neither LOCAL nor PROXY",
            ));
        }
    };
    // LOCAL: the receiver must ignore the family and the addresses.
    if proxied && (family_transport >> 4 > 3 || family_transport & 0x0f > 2) {
        return Err(HeaderError::Invalid(
            "v2: unknown address family or transport",
        ));
    }
    let payload_len = usize::from(u16::from_be_bytes([len_high, len_low]));
    if payload_len > V2_MAX_PAYLOAD {
        return Err(HeaderError::TooLong);
    }
    let len = V2_FIXED_LEN + payload_len;
    let Some(payload) = buf.get(V2_FIXED_LEN..len) else {
        return Ok(Decoded::Incomplete);
    };
    let header = if proxied {
        v2_addresses(family_transport, payload)?
    } else {
        ProxyHeader::Local
    };
    Ok(Decoded::Complete { header, len })
}

/// The addresses of a v2 `PROXY` header; extensions after them are skipped.
fn v2_addresses(family_transport: u8, payload: &[u8]) -> Result<ProxyHeader, HeaderError> {
    const TCP_OVER_IPV4: u8 = 0x11;
    const TCP_OVER_IPV6: u8 = 0x21;
    let cut = HeaderError::Invalid("v2: the addresses are cut short");
    let mut rest = payload;
    let (source, destination) = match family_transport {
        TCP_OVER_IPV4 => (
            IpAddr::from(take::<4>(&mut rest).ok_or(cut)?),
            IpAddr::from(take::<4>(&mut rest).ok_or(cut)?),
        ),
        TCP_OVER_IPV6 => (
            IpAddr::from(take::<16>(&mut rest).ok_or(cut)?),
            IpAddr::from(take::<16>(&mut rest).ok_or(cut)?),
        ),
        _ => return Ok(ProxyHeader::Local),
    };
    let source_port = u16::from_be_bytes(take::<2>(&mut rest).ok_or(cut)?);
    let destination_port = u16::from_be_bytes(take::<2>(&mut rest).ok_or(cut)?);
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(source, source_port),
        destination: SocketAddr::new(destination, destination_port),
    })
}

/// The first `N` bytes of `bytes`, which then starts after them.
fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    *bytes = rest;
    Some(*head)
}

/// Whether `buf` and `prefix` agree on their common length.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match decode(buf) {
            Ok(Decoded::Complete { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    /// A v2 header: command, family and transport, payload.
    fn v2(command: u8, family_transport: u8, payload: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family_transport);
        header.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        header.extend_from_slice(payload);
        header
    }

    fn v2_tcp4() -> Vec<u8> {
        v2(
            1,
            0x11,
            &[203, 0, 113, 7, 192, 0, 2, 1, 0xdc, 0x04, 0x01, 0xbb],
        )
    }

    /// Every strict prefix of a valid header asks for more bytes.
    fn every_prefix_is_incomplete(header: &[u8]) {
        for n in 0..header.len() {
            assert_eq!(decode(&header[..n]), Ok(Decoded::Incomplete), "prefix {n}");
        }
    }

    #[test]
    fn v1_tcp4_and_what_follows_it() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n";
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"GET /ws HTTP/1.1\r\n");
        assert_eq!(
            complete(&buf),
            (proxied("203.0.113.7:56324", "192.0.2.1:443"), line.len())
        );
        every_prefix_is_incomplete(line);
    }

    #[test]
    fn v1_tcp6() {
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n";
        assert_eq!(
            complete(line),
            (
                proxied("[2001:db8::7]:56324", "[2001:db8::1]:443"),
                line.len()
            )
        );
        // An IPv4 address is not a TCP6 address, nor the other way round.
        for bad in [
            &b"PROXY TCP6 203.0.113.7 192.0.2.1 1 2\r\n"[..],
            b"PROXY TCP4 2001:db8::7 2001:db8::1 1 2\r\n",
        ] {
            assert!(matches!(decode(bad), Err(HeaderError::Invalid(_))));
        }
    }

    #[test]
    fn v1_at_107_bytes_is_accepted_and_at_108_refused() {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let longest = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_eq!(complete(longest.as_bytes()), (ProxyHeader::Local, 107));
        every_prefix_is_incomplete(longest.as_bytes());

        let too_long = format!("PROXY UNKNOWN {full} {full} 65535 655350\r\n");
        assert_eq!(decode(too_long.as_bytes()), Err(HeaderError::TooLong));
        // Refused as soon as 107 bytes hold no line end, without waiting for more.
        assert_eq!(
            decode(&too_long.as_bytes()[..107]),
            Err(HeaderError::TooLong)
        );
        assert_eq!(decode(&too_long.as_bytes()[..106]), Ok(Decoded::Incomplete));

        // The longest TCP6 line.
        let tcp6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(complete(tcp6.as_bytes()).1, tcp6.len());
    }

    #[test]
    fn v1_unknown_is_local() {
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (ProxyHeader::Local, 15));
        assert_eq!(
            complete(b"PROXY UNKNOWN whatever \xff\r\nGET"),
            (ProxyHeader::Local, 26)
        );
        assert!(decode(b"PROXY UNKNOWNX\r\n").is_err());
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n"[..],
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443 7\r\n",
            b"PROXY TCP4  203.0.113.7 192.0.2.1 56324 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443 \r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 +1 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 000443 443\r\n",
            b"PROXY TCP4 203.0.113.256 192.0.2.1 1 443\r\n",
            b"PROXY UDP4 203.0.113.7 192.0.2.1 56324 443\r\n",
            b"PROXY tcp4 203.0.113.7 192.0.2.1 56324 443\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\n",
            b"PROXY TCP4 203.0.113.7\r192.0.2.1 56324 443\r\n",
            b"PROXY \r\n",
            b"PROXY\r\n",
        ] {
            assert!(
                decode(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn no_header_is_told_at_the_first_wrong_byte() {
        assert_eq!(decode(b"G"), Err(HeaderError::Missing));
        assert_eq!(decode(b"PO"), Err(HeaderError::Missing));
        assert_eq!(decode(b"PROXY"), Ok(Decoded::Incomplete));
        assert_eq!(decode(b"\x16\x03\x01"), Err(HeaderError::Missing));
        assert_eq!(decode(b"\r\n\r\n\0\r\nQUIX"), Err(HeaderError::Missing));
        assert_eq!(decode(b"\r\n\r\n\0\r\nQU"), Ok(Decoded::Incomplete));
        assert_eq!(decode(b""), Ok(Decoded::Incomplete));
    }

    #[test]
    fn v2_tcp4_and_what_follows_it() {
        let header = v2_tcp4();
        let mut buf = header.clone();
        buf.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            complete(&buf),
            (proxied("203.0.113.7:56324", "192.0.2.1:443"), 28)
        );
        every_prefix_is_incomplete(&header);
    }

    #[test]
    fn v2_tcp6_with_extensions() {
        let mut payload = Vec::new();
        payload.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        payload.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        payload.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        // An AWS VPC endpoint id extension (type 0xEA), skipped.
        payload.extend_from_slice(b"\xea\x00\x09\x01vpce-123");
        let header = v2(1, 0x21, &payload);
        assert_eq!(
            complete(&header),
            (
                proxied("[2001:db8::7]:56324", "[2001:db8::1]:443"),
                16 + payload.len()
            )
        );
        every_prefix_is_incomplete(&header);
    }

    #[test]
    fn v2_local_and_other_families_are_local() {
        assert_eq!(complete(&v2(0, 0x00, &[])), (ProxyHeader::Local, 16));
        // LOCAL ignores whatever family and addresses it carries.
        assert_eq!(complete(&v2(0, 0xff, &[1, 2, 3])), (ProxyHeader::Local, 19));
        assert_eq!(complete(&v2(1, 0x00, &[])), (ProxyHeader::Local, 16));
        assert_eq!(complete(&v2(1, 0x12, &[0; 12])), (ProxyHeader::Local, 28));
        assert_eq!(complete(&v2(1, 0x31, &[0; 216])), (ProxyHeader::Local, 232));
    }

    #[test]
    fn v2_truncated_addresses_are_refused() {
        // The length says 11 bytes: one short of two IPv4 addresses and ports.
        let short = v2(1, 0x11, &[203, 0, 113, 7, 192, 0, 2, 1, 0xdc, 0x04, 0x01]);
        assert!(matches!(decode(&short), Err(HeaderError::Invalid(_))));
        let short = v2(1, 0x21, &[0; 35]);
        assert!(matches!(decode(&short), Err(HeaderError::Invalid(_))));
        // The stream stops early: more bytes are wanted, whatever they will be.
        let header = v2_tcp4();
        assert_eq!(decode(&header[..27]), Ok(Decoded::Incomplete));
    }

    #[test]
    fn v2_bad_fields_are_refused() {
        let mut wrong_version = v2_tcp4();
        wrong_version[12] = 0x11;
        assert!(matches!(
            decode(&wrong_version),
            Err(HeaderError::Invalid(_))
        ));
        let mut wrong_command = v2_tcp4();
        wrong_command[12] = 0x22;
        assert!(matches!(
            decode(&wrong_command),
            Err(HeaderError::Invalid(_))
        ));
        let mut wrong_family = v2_tcp4();
        wrong_family[13] = 0x41;
        assert!(matches!(
            decode(&wrong_family),
            Err(HeaderError::Invalid(_))
        ));
        let mut wrong_transport = v2_tcp4();
        wrong_transport[13] = 0x13;
        assert!(matches!(
            decode(&wrong_transport),
            Err(HeaderError::Invalid(_))
        ));
        // Refused from the fixed part alone.
        assert!(decode(&wrong_version[..16]).is_err());
    }

    #[test]
    fn v2_length_is_bounded() {
        let at_bound = v2(0, 0x00, &[0; V2_MAX_PAYLOAD]);
        assert_eq!(complete(&at_bound), (ProxyHeader::Local, MAX_LEN));
        let mut over = at_bound[..16].to_vec();
        over[14..16].copy_from_slice(&u16::try_from(V2_MAX_PAYLOAD + 1).unwrap().to_be_bytes());
        // Refused at the fixed part, before any payload is buffered.
        assert_eq!(decode(&over), Err(HeaderError::TooLong));
        over[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(decode(&over), Err(HeaderError::TooLong));
    }

    #[test]
    fn the_client_is_the_source_or_the_peer() {
        let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        assert_eq!(ProxyHeader::Local.client(peer), peer);
        assert_eq!(
            proxied("203.0.113.7:1", "192.0.2.1:2").client(peer),
            "203.0.113.7:1".parse().unwrap()
        );
    }
}
