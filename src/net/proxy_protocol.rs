//! The PROXY protocol, v1 (text) and v2 (binary), as haproxy's `proxy-protocol.txt` defines it:
//! [`encode`] builds the header splicer writes to a backend (`send_proxy`), [`parse`] strictly
//! reads the one an upstream balancer writes to us (`accept_proxy`).
//!
//! Pure: [`parse`] reads the bytes a listener has buffered so far and returns a verdict; the
//! listener owns the socket, the deadline, and what follows the header (it hands the bytes
//! after `consumed` on to the ClientHello peek and the backend).
//!
//! With `accept_proxy` the header is mandatory (the spec forbids guessing whether one is
//! present), so the caller closes the connection on any `Err`. `NotProxy` is told apart only so
//! that a misconfigured upstream shows up as such in the logs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use thiserror::Error;

/// The 12 bytes every v2 header starts with; chosen by the spec so that no v1 or text protocol
/// line can start with them.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 line, CRLF included (spec §2.1: a receiver never needs to read more).
pub const V1_MAX_LEN: usize = 107;

/// TLV bytes a v2 header may carry after its addresses.
///
/// The spec allows 64 KiB, but splicer reads no TLV: the cap bounds what an upstream can make
/// us buffer per connection, and is well above what haproxy or cloud balancers send (a few
/// dozen bytes: unique id, ALPN, authority, CRC).
pub const V2_MAX_TLV_LEN: usize = 1024;

/// v2 fixed header: signature, version/command, family/transport, 16-bit length.
const V2_HEADER_LEN: usize = 16;
/// The text every v1 line starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Version 2 in the high nibble of the version/command byte.
const V2_VERSION: u8 = 2;
/// Command LOCAL: a connection the upstream made itself (e.g. a health check).
const CMD_LOCAL: u8 = 0;
/// Command PROXY: a relayed client connection.
const CMD_PROXY: u8 = 1;
/// TCP over IPv4 in the family/transport byte.
const TCP_OVER_IPV4: u8 = 0x11;
/// TCP over IPv6 in the family/transport byte.
const TCP_OVER_IPV6: u8 = 0x21;
/// Bytes of the address block for AF_INET: two addresses and two ports.
const IPV4_BLOCK_LEN: usize = 4 + 4 + 2 + 2;
/// Bytes of the address block for AF_INET6.
const IPV6_BLOCK_LEN: usize = 16 + 16 + 2 + 2;
/// Bytes of the address block for AF_UNIX: two 108-byte paths.
const UNIX_BLOCK_LEN: usize = 108 + 108;

/// Which PROXY protocol version to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The human-readable line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Use the connection's own addresses: v2 LOCAL, v1 UNKNOWN, or a v2 PROXY header for a
    /// family other than TCP over IPv4/IPv6.
    Local,
    /// A relayed TCP connection from `src` (the client) to `dst` (the address it reached).
    Tcp {
        /// The original client's address.
        src: SocketAddr,
        /// The address the client connected to.
        dst: SocketAddr,
    },
}

/// The verdict of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid prefix of a PROXY header: read more and call [`parse`] again with all bytes.
    NeedMore,
    /// A complete header; the connection's own data starts at `consumed`.
    Done {
        /// The header's content.
        header: ProxyHeader,
        /// Length of the header in bytes (≤ `buf.len()`).
        consumed: usize,
    },
}

/// Why the bytes received are not an acceptable PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProxyProtocolError {
    /// The bytes start neither like a v1 line nor like a v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// No CRLF within the first 107 bytes of a v1 line.
    #[error("PROXY v1 line has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A v1 field is missing, extra or not valid for its place.
    #[error("PROXY v1 line has an invalid {field}")]
    V1Field {
        /// The field: protocol, source/destination address or port, or field count.
        field: &'static str,
    },
    /// The v2 version nibble is not 2.
    #[error("PROXY v2 header has version {version}, expected 2")]
    V2Version {
        /// The high nibble of byte 13.
        version: u8,
    },
    /// The v2 command is neither LOCAL nor PROXY.
    #[error("PROXY v2 command {command} is neither LOCAL (0) nor PROXY (1)")]
    V2Command {
        /// The low nibble of byte 13.
        command: u8,
    },
    /// The v2 family/transport byte has a value the spec leaves undefined.
    #[error("PROXY v2 family/transport byte {byte:#04x} is undefined")]
    V2Family {
        /// Byte 14.
        byte: u8,
    },
    /// The v2 length cannot hold the address block of the declared family.
    #[error("PROXY v2 length {len} is shorter than its {need}-byte address block")]
    V2Short {
        /// The declared length.
        len: usize,
        /// The address block's size.
        need: usize,
    },
    /// The v2 length exceeds the addresses plus [`V2_MAX_TLV_LEN`].
    #[error("PROXY v2 length {len} exceeds the {max}-byte limit")]
    V2TooLong {
        /// The declared length.
        len: usize,
        /// The limit for the declared family.
        max: usize,
    },
    /// A v2 TLV runs past the end of the header.
    #[error("PROXY v2 TLV at offset {offset} overruns the header")]
    V2Tlv {
        /// Offset of the TLV from the start of the header.
        offset: usize,
    },
}

/// Builds the header to send to a backend before the client's bytes.
///
/// A TCP connection whose two ends are of different families (an IPv4 client reaching an IPv6
/// listener, say) is written as TCP over IPv6 with the IPv4 address mapped (`::ffff:a.b.c.d`),
/// since both protocol versions carry a single family per header.
pub fn encode(version: Version, header: &ProxyHeader) -> Vec<u8> {
    match version {
        Version::V1 => encode_v1(header),
        Version::V2 => encode_v2(header),
    }
}

/// A connection's two ends in one family.
enum Ends {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> Ends {
    let as_v6 = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    };
    match (src, dst) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => Ends::V4(src, dst),
        (src, dst) => Ends::V6(as_v6(src), as_v6(dst)),
    }
}

fn encode_v1(header: &ProxyHeader) -> Vec<u8> {
    let line = match *header {
        ProxyHeader::Local => "PROXY UNKNOWN\r\n".to_owned(),
        ProxyHeader::Tcp { src, dst } => {
            let (protocol, src_ip, dst_ip, src_port, dst_port) = match same_family(src, dst) {
                Ends::V4(s, d) => (
                    "TCP4",
                    s.ip().to_string(),
                    d.ip().to_string(),
                    s.port(),
                    d.port(),
                ),
                Ends::V6(s, d) => (
                    "TCP6",
                    s.ip().to_string(),
                    d.ip().to_string(),
                    s.port(),
                    d.port(),
                ),
            };
            format!("PROXY {protocol} {src_ip} {dst_ip} {src_port} {dst_port}\r\n")
        }
    };
    line.into_bytes()
}

fn encode_v2(header: &ProxyHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_HEADER_LEN + IPV6_BLOCK_LEN);
    out.extend_from_slice(&V2_SIGNATURE);
    let version = V2_VERSION << 4;
    match *header {
        // No addresses: the spec asks LOCAL senders for AF_UNSPEC and a zero length.
        ProxyHeader::Local => out.extend_from_slice(&[version | CMD_LOCAL, 0x00, 0, 0]),
        ProxyHeader::Tcp { src, dst } => {
            out.push(version | CMD_PROXY);
            match same_family(src, dst) {
                Ends::V4(s, d) => {
                    out.push(TCP_OVER_IPV4);
                    out.extend_from_slice(&(IPV4_BLOCK_LEN as u16).to_be_bytes());
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                Ends::V6(s, d) => {
                    out.push(TCP_OVER_IPV6);
                    out.extend_from_slice(&(IPV6_BLOCK_LEN as u16).to_be_bytes());
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
            }
        }
    }
    out
}

/// Reads a v1 or v2 header from the start of a connection; `buf` is every byte received so far.
///
/// Never reads past `buf`, never panics, and returns a final verdict as soon as the bytes
/// decide it (`NotProxy` after one byte of anything but `P` or `\r`). Once a prefix has a final
/// verdict, every longer buffer gets the same one.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    match buf.first() {
        None => Ok(Parsed::NeedMore),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyProtocolError::NotProxy),
    }
}

/// True while `buf` agrees with `expected` on every byte both have.
fn agrees_with(buf: &[u8], expected: &[u8]) -> bool {
    buf.iter().zip(expected).all(|(a, b)| a == b)
}

// ---- v1 ----

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    if !agrees_with(buf, V1_PREFIX) {
        return Err(ProxyProtocolError::NotProxy);
    }
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    if let Some(cr) = window.windows(2).position(|pair| pair == b"\r\n") {
        // The prefix check put "PROXY " (which holds no CR) first, so the line contains it.
        let fields = window.get(V1_PREFIX.len()..cr).unwrap_or_default();
        let header = v1_fields(fields, true)?.ok_or(v1_field("field count"))?;
        return Ok(Parsed::Done {
            header,
            consumed: cr + 2,
        });
    }
    // No CRLF yet: the line so far must be a prefix of a valid one. A final CR may be the
    // start of the CRLF.
    let partial = window.strip_suffix(b"\r").unwrap_or(window);
    if let Some(fields) = partial.get(V1_PREFIX.len()..) {
        v1_fields(fields, false)?;
    }
    if window.len() >= V1_MAX_LEN {
        return Err(ProxyProtocolError::V1TooLong);
    }
    Ok(Parsed::NeedMore)
}

fn v1_field(field: &'static str) -> ProxyProtocolError {
    ProxyProtocolError::V1Field { field }
}

/// Checks the text after `PROXY `: the whole line when `complete`, else a prefix of one (whose
/// last field may be cut short). Returns the header once a complete line is valid.
///
/// Fields are checked in order and a cut-short field only by rules every prefix of a valid one
/// passes, so a prefix never fails where the full line would pass or fail differently.
fn v1_fields(text: &[u8], complete: bool) -> Result<Option<ProxyHeader>, ProxyProtocolError> {
    let (protocol, rest) = match text.iter().position(|&b| b == b' ') {
        Some(space) => (text.get(..space).unwrap_or_default(), text.get(space + 1..)),
        None => (text, None),
    };
    let protocol_is_whole = complete || rest.is_some();
    let is_protocol = |name: &[u8]| {
        if protocol_is_whole {
            protocol == name
        } else {
            name.starts_with(protocol)
        }
    };
    if is_protocol(b"UNKNOWN") {
        // The spec has the receiver ignore everything after UNKNOWN up to the CRLF; only a
        // stray CR or LF, which would make the line ambiguous, is refused.
        if rest
            .unwrap_or_default()
            .iter()
            .any(|&b| b == b'\r' || b == b'\n')
        {
            return Err(v1_field("UNKNOWN line"));
        }
        return Ok(complete.then_some(ProxyHeader::Local));
    }
    let is_v6 = if is_protocol(b"TCP4") {
        false
    } else if is_protocol(b"TCP6") {
        true
    } else {
        return Err(v1_field("protocol"));
    };
    let Some(rest) = rest else {
        // "PROXY TCP4\r\n", or a line still inside its protocol field.
        return if complete {
            Err(v1_field("field count"))
        } else {
            Ok(None)
        };
    };

    let mut tokens = rest.split(|&b| b == b' ');
    let [src, dst, src_port, dst_port, extra]: [Option<&[u8]>; 5] =
        std::array::from_fn(|_| tokens.next());
    // A field is whole once the line is complete or a space has ended it.
    let whole = |next: Option<&[u8]>| complete || next.is_some();
    let address = |token: &[u8], whole| v1_address(token, is_v6, whole);
    let src = v1_token(src, whole(dst), complete, "source address", address)?;
    let dst = v1_token(
        dst,
        whole(src_port),
        complete,
        "destination address",
        address,
    )?;
    let src_port = v1_token(src_port, whole(dst_port), complete, "source port", v1_port)?;
    let dst_port = v1_token(
        dst_port,
        whole(extra),
        complete,
        "destination port",
        v1_port,
    )?;
    // A space after the destination port starts a fifth field, which v1 does not have.
    if extra.is_some() {
        return Err(v1_field("field count"));
    }
    Ok(match (src, dst, src_port, dst_port) {
        (Some(src), Some(dst), Some(src_port), Some(dst_port)) => Some(ProxyHeader::Tcp {
            src: SocketAddr::new(src, src_port),
            dst: SocketAddr::new(dst, dst_port),
        }),
        _ => None,
    })
}

/// Checks one field with `check` (which gets the token and whether it is whole): `Some` for a
/// whole valid field, `None` for one not yet (fully) received, an error naming `field` for an
/// invalid one or, in a complete line, a missing one.
fn v1_token<T>(
    token: Option<&[u8]>,
    whole: bool,
    complete: bool,
    field: &'static str,
    check: impl Fn(&[u8], bool) -> Option<Option<T>>,
) -> Result<Option<T>, ProxyProtocolError> {
    match token {
        Some(token) => check(token, whole).ok_or(v1_field(field)),
        None if complete => Err(v1_field("field count")),
        None => Ok(None),
    }
}

/// Checks an address field; `Some(Some(ip))` for a valid whole field, `Some(None)` for a
/// plausible cut-short one, `None` when invalid.
///
/// std's parsers are strict in the way the spec wants: no leading zeros in IPv4 octets, no
/// zone ids, no surrounding spaces.
fn v1_address(token: &[u8], is_v6: bool, whole: bool) -> Option<Option<std::net::IpAddr>> {
    if whole {
        let text = std::str::from_utf8(token).ok()?;
        let ip = if is_v6 {
            text.parse::<Ipv6Addr>().ok()?.into()
        } else {
            text.parse::<Ipv4Addr>().ok()?.into()
        };
        return Some(Some(ip));
    }
    // Longest textual forms: "255.255.255.255" and "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
    let (max_len, allowed): (usize, fn(&u8) -> bool) = if is_v6 {
        (45, |b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
    } else {
        (15, |b| b.is_ascii_digit() || *b == b'.')
    };
    (token.len() <= max_len && token.iter().all(allowed)).then_some(None)
}

/// Checks a port field: decimal 0..=65535 without sign or leading zeros. `Some(Some(port))`
/// when whole and valid, `Some(None)` for a plausible cut-short field, `None` when invalid.
fn v1_port(token: &[u8], whole: bool) -> Option<Option<u16>> {
    if token.len() > 5 || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if token.len() > 1 && token.first() == Some(&b'0') {
        return None;
    }
    let value = token
        .iter()
        .fold(0u32, |n, &digit| n * 10 + u32::from(digit - b'0'));
    let port = u16::try_from(value).ok()?;
    match (whole, token.is_empty()) {
        (true, true) => None,
        (true, false) => Some(Some(port)),
        (false, _) => Some(None),
    }
}

// ---- v2 ----

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    if !agrees_with(buf, &V2_SIGNATURE) {
        return Err(ProxyProtocolError::NotProxy);
    }
    // Check bytes 13 and 14 as soon as they arrive, in wire order.
    let command = match buf.get(V2_SIGNATURE.len()) {
        Some(&ver_cmd) => v2_command(ver_cmd)?,
        None => return Ok(Parsed::NeedMore),
    };
    let family = match buf.get(V2_SIGNATURE.len() + 1) {
        Some(&byte) => v2_family(byte)?,
        None => return Ok(Parsed::NeedMore),
    };
    let Some((&[.., hi, lo], payload)) = buf.split_first_chunk::<V2_HEADER_LEN>() else {
        return Ok(Parsed::NeedMore);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // The spec forbids a PROXY header too short for its addresses; LOCAL discards the block,
    // whatever its family says, so any length is fine there.
    if command == CMD_PROXY && len < family.block_len {
        return Err(ProxyProtocolError::V2Short {
            len,
            need: family.block_len,
        });
    }
    let max = family.block_len + V2_MAX_TLV_LEN;
    if len > max {
        return Err(ProxyProtocolError::V2TooLong { len, max });
    }
    let Some(block) = payload.get(..len) else {
        return Ok(Parsed::NeedMore);
    };
    let consumed = V2_HEADER_LEN + len;
    if command == CMD_LOCAL {
        return Ok(Parsed::Done {
            header: ProxyHeader::Local,
            consumed,
        });
    }

    let (addresses, tlvs) =
        block
            .split_at_checked(family.block_len)
            .ok_or(ProxyProtocolError::V2Short {
                len,
                need: family.block_len,
            })?;
    check_tlvs(tlvs, V2_HEADER_LEN + family.block_len)?;
    let header = match family.byte {
        TCP_OVER_IPV4 => tcp_v4(addresses),
        TCP_OVER_IPV6 => tcp_v6(addresses),
        // UNSPEC, UNIX, UDP: the spec lets the receiver use the connection's own addresses.
        // A TCP balancer has nothing better to do with them, and refusing would break an
        // upstream that relays, say, unix-socket clients.
        _ => None,
    }
    .unwrap_or(ProxyHeader::Local);
    Ok(Parsed::Done { header, consumed })
}

/// Validates the version nibble and returns the command.
fn v2_command(ver_cmd: u8) -> Result<u8, ProxyProtocolError> {
    let (version, command) = (ver_cmd >> 4, ver_cmd & 0x0F);
    if version != V2_VERSION {
        return Err(ProxyProtocolError::V2Version { version });
    }
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyProtocolError::V2Command { command });
    }
    Ok(command)
}

/// A validated family/transport byte with the size of its address block.
struct V2Family {
    byte: u8,
    block_len: usize,
}

/// The spec defines families 0–3 (UNSPEC, INET, INET6, UNIX) and transports 0–2 (UNSPEC,
/// STREAM, DGRAM), and tells receivers to reject anything else.
fn v2_family(byte: u8) -> Result<V2Family, ProxyProtocolError> {
    let block_len = match byte >> 4 {
        0 => 0,
        1 => IPV4_BLOCK_LEN,
        2 => IPV6_BLOCK_LEN,
        3 => UNIX_BLOCK_LEN,
        _ => return Err(ProxyProtocolError::V2Family { byte }),
    };
    if byte & 0x0F > 2 {
        return Err(ProxyProtocolError::V2Family { byte });
    }
    Ok(V2Family { byte, block_len })
}

/// Checks that the TLVs (type, 16-bit length, value) tile the rest of the header exactly.
///
/// Their content is not read: splicer forwards the client's own bytes and has no use for
/// them. A CRC32C TLV is therefore not verified (the spec makes checking optional).
fn check_tlvs(mut tlvs: &[u8], mut offset: usize) -> Result<(), ProxyProtocolError> {
    while !tlvs.is_empty() {
        let overrun = ProxyProtocolError::V2Tlv { offset };
        let (&[_, hi, lo], rest) = tlvs.split_first_chunk::<3>().ok_or(overrun)?;
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = rest.get(len..).ok_or(overrun)?;
        offset += 3 + len;
    }
    Ok(())
}

fn tcp_v4(block: &[u8]) -> Option<ProxyHeader> {
    let (&[a, b, c, d, e, f, g, h, sp1, sp2, dp1, dp2], _) = block.split_first_chunk::<12>()?;
    Some(ProxyHeader::Tcp {
        src: (Ipv4Addr::new(a, b, c, d), u16::from_be_bytes([sp1, sp2])).into(),
        dst: (Ipv4Addr::new(e, f, g, h), u16::from_be_bytes([dp1, dp2])).into(),
    })
}

fn tcp_v6(block: &[u8]) -> Option<ProxyHeader> {
    let (src, rest) = block.split_first_chunk::<16>()?;
    let (dst, rest) = rest.split_first_chunk::<16>()?;
    let (&[sp1, sp2, dp1, dp2], _) = rest.split_first_chunk::<4>()?;
    Some(ProxyHeader::Tcp {
        src: (Ipv6Addr::from(*src), u16::from_be_bytes([sp1, sp2])).into(),
        dst: (Ipv6Addr::from(*dst), u16::from_be_bytes([dp1, dp2])).into(),
    })
}

#[cfg(test)]
mod tests;
