//! Peeks the SNI host name out of a TLS ClientHello, so a listener can route a connection by
//! name while the TLS session stays end to end between the client and the backend.
//!
//! Pure: [`peek`] reads the bytes a listener has buffered so far and returns a verdict; the
//! listener owns the socket, `client_hello_timeout`, and replaying every buffered byte to the
//! backend it picks. Nothing here decrypts, answers or rejects anything.
//!
//! How a listener acts on each verdict:
//! - [`Peek::NeedMore`]: read more and call again with *all* bytes received so far. The parser
//!   refuses (with an error) before the buffer needs more than [`MAX_CLIENT_HELLO`] bytes plus
//!   5 bytes for each of at most [`MAX_RECORDS`] records, so the caller needs no cap of its own.
//! - [`Peek::Done`]: route by [`ClientHelloInfo::sni`] with [`route`]; `None` → default pool.
//! - [`Peek::NoSni`], [`Peek::NotTls`] and `Err(_)`: the listener's default pool. A malformed
//!   ClientHello is not ours to refuse: the backend's TLS stack answers it with a proper alert.
//!   The error only says why the connection could not be routed by name (log it at debug).
//!
//! The parser is deliberately small and strict: it reads the record layer and the ClientHello
//! fields needed to reach the extensions, length-checks everything it walks over, and never
//! allocates more than the bytes actually present.

use std::borrow::Cow;

use thiserror::Error;

/// Largest ClientHello we reassemble, in bytes of handshake message (4-byte header included).
///
/// Real ClientHellos are well under 2 KiB (about 1.8 KiB with a post-quantum key share); 16 KiB
/// leaves room for large session tickets while bounding what one unrouted connection can make
/// us buffer.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Most records a ClientHello may be split into.
///
/// Clients send one record; tools that fragment the hello to dodge middleboxes use a few dozen.
/// The cap bounds the work of each [`peek`] call, which walks every record received so far: a
/// hello in thousands of 1-byte records, re-peeked after every read, would otherwise cost
/// quadratic CPU time.
pub const MAX_RECORDS: usize = 1024;

/// TLS content type of handshake records (RFC 8446 §5.1).
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Content type (1) + legacy_record_version (2) + length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Message type (1) + 24-bit length (3).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// A plaintext record carries at most 2^14 bytes (RFC 8446 §5.1).
const MAX_RECORD_LEN: usize = 1 << 14;
/// Extension number of server_name (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// The only ServerName type RFC 6066 defines.
const NAME_TYPE_HOST_NAME: u8 = 0;
/// A DNS name without its trailing dot is at most 253 characters.
const MAX_HOST_NAME: usize = 253;
/// A DNS label is at most 63 characters.
const MAX_LABEL: usize = 63;
/// legacy_session_id is `opaque<0..32>`.
const MAX_SESSION_ID: usize = 32;
/// Size of ClientHello.random.
const RANDOM_LEN: usize = 32;

/// What the bytes received so far say about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// A valid prefix of a TLS ClientHello: read more bytes and call [`peek`] again.
    NeedMore,
    /// A complete ClientHello carrying a server_name extension.
    Done(ClientHelloInfo),
    /// The first bytes are not a TLS handshake record (plain HTTP, SSH, ...).
    NotTls,
    /// A complete, well-formed ClientHello without a server_name extension.
    NoSni,
}

/// The routing-relevant facts of a complete ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The lowercased host_name; `None` when server_name lists only unknown name types.
    pub sni: Option<String>,
    /// Bytes of the buffer taken by the records that carry the ClientHello (≤ `buf.len()`).
    pub consumed: usize,
}

/// Why a buffer that started like a TLS handshake cannot be routed by name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientHelloError {
    /// A record after the first one is not a handshake record.
    #[error("TLS record of content type {content_type} interrupts the ClientHello")]
    UnexpectedRecord {
        /// The content type found.
        content_type: u8,
    },
    /// A record after the first one has a major version other than 3.
    #[error("TLS record with major version {major}, expected 3")]
    RecordVersion {
        /// The major version byte found.
        major: u8,
    },
    /// A handshake record with no payload, which RFC 8446 §5.1 forbids.
    #[error("empty TLS handshake record")]
    EmptyRecord,
    /// The ClientHello spans more than [`MAX_RECORDS`] records.
    #[error("ClientHello spans more than {MAX_RECORDS} TLS records")]
    TooManyRecords,
    /// A record longer than a plaintext record may be.
    #[error("TLS record of {len} bytes exceeds {MAX_RECORD_LEN}")]
    RecordTooLong {
        /// The claimed record length.
        len: usize,
    },
    /// The first handshake message is not a ClientHello.
    #[error("handshake message type {msg_type} is not ClientHello (1)")]
    NotClientHello {
        /// The message type found.
        msg_type: u8,
    },
    /// The ClientHello claims more than [`MAX_CLIENT_HELLO`] bytes.
    #[error("ClientHello of {len} bytes exceeds the {MAX_CLIENT_HELLO}-byte limit")]
    TooLarge {
        /// The claimed message length, header included.
        len: usize,
    },
    /// More handshake bytes follow the ClientHello in its last record.
    #[error("handshake data follows the ClientHello in its last record")]
    TrailingHandshake,
    /// A ClientHello field is truncated, overlong or out of range.
    #[error("malformed ClientHello field: {field}")]
    Malformed {
        /// The field that failed, as named in RFC 8446 / RFC 6066.
        field: &'static str,
    },
    /// Something that may appear once appears twice.
    #[error("duplicate {what} in ClientHello")]
    Duplicate {
        /// What was repeated.
        what: &'static str,
    },
    /// The host_name is not a syntactically valid DNS name.
    #[error("invalid SNI host_name: {reason}")]
    InvalidHostName {
        /// Which rule the name breaks.
        reason: &'static str,
    },
}

/// Reads the SNI from the start of a connection; `buf` is every byte received so far.
///
/// Never reads past `buf`, never panics, and returns a final verdict (anything but `NeedMore`)
/// as soon as the bytes decide it: `NotTls` after the first byte of plain HTTP or SSH. Once a
/// prefix has a final verdict, every longer buffer gets the same one.
pub fn peek(buf: &[u8]) -> Result<Peek, ClientHelloError> {
    // The first two bytes of a TLS connection are 22 (handshake) and 3 (the major version of
    // every TLS and SSLv3 record); anything else goes to the default pool at once.
    match buf {
        [] => return Ok(Peek::NeedMore),
        [first, ..] if *first != CONTENT_TYPE_HANDSHAKE => return Ok(Peek::NotTls),
        [_, major, ..] if *major != 3 => return Ok(Peek::NotTls),
        _ => {}
    }

    // Each call walks only the record headers and keeps the 4-byte handshake header aside; the
    // fragments are copied together once, when the whole ClientHello is there. Callers re-peek
    // after every read, so a per-call copy would make a hello sent as many tiny records cost
    // quadratic time.
    let mut handshake_header = HandshakeHeader::default();
    let mut present = 0; // handshake bytes in the records walked so far
    let mut pos = 0;
    for _ in 0..MAX_RECORDS {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(declared) = record_header(rest)? else {
            return Ok(Peek::NeedMore);
        };
        let payload = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let fragment = payload.get(..declared).unwrap_or(payload);
        handshake_header.fill_from(fragment);
        let before = present;
        present += fragment.len();

        if let Some(total) = message_len(handshake_header.bytes())? {
            // A ClientHello is the client's only handshake message until the server answers,
            // so it must end exactly where a record ends. `total > before` holds: had the
            // message ended in an earlier record, the loop would have stopped there.
            let end_in_record = total.saturating_sub(before);
            if end_in_record < declared {
                return Err(ClientHelloError::TrailingHandshake);
            }
            if end_in_record == declared && fragment.len() == declared {
                let consumed = pos + RECORD_HEADER_LEN + declared;
                let records = buf.get(..consumed).unwrap_or(buf);
                let handshake = if pos == 0 {
                    Cow::Borrowed(fragment)
                } else {
                    Cow::Owned(reassemble(records))
                };
                let body = handshake.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
                return Ok(match parse_client_hello(body)? {
                    ServerName::Absent => Peek::NoSni,
                    ServerName::Present(sni) => Peek::Done(ClientHelloInfo { sni, consumed }),
                });
            }
        }
        if fragment.len() < declared {
            return Ok(Peek::NeedMore);
        }
        pos += RECORD_HEADER_LEN + declared;
    }
    // Every allowed record is complete and the ClientHello has not ended.
    Err(ClientHelloError::TooManyRecords)
}

/// The first bytes of the handshake message, gathered across records (it may be split even
/// inside its 4-byte header).
#[derive(Default)]
struct HandshakeHeader {
    bytes: [u8; HANDSHAKE_HEADER_LEN],
    len: usize,
}

impl HandshakeHeader {
    /// Takes what it still lacks from the start of `fragment`.
    fn fill_from(&mut self, fragment: &[u8]) {
        let missing = self.bytes.get_mut(self.len..).unwrap_or_default();
        let n = missing.len().min(fragment.len());
        if let (Some(dst), Some(src)) = (missing.get_mut(..n), fragment.get(..n)) {
            dst.copy_from_slice(src);
            self.len += n;
        }
    }

    fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Concatenates the fragments of a run of complete records that [`peek`] has validated.
fn reassemble(mut records: &[u8]) -> Vec<u8> {
    let mut handshake = Vec::with_capacity(records.len());
    while let Some((&[_, _, _, hi, lo], rest)) = records.split_first_chunk::<RECORD_HEADER_LEN>() {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let (fragment, next) = rest.split_at_checked(len).unwrap_or((rest, &[]));
        handshake.extend_from_slice(fragment);
        records = next;
    }
    handshake
}

/// Checks the bytes present of a record header, in wire order; returns the record's length
/// once all five are there.
///
/// Only records after the first reach the type and version errors: [`peek`] has already sent
/// a first record with a wrong type or version to `NotTls`.
fn record_header(bytes: &[u8]) -> Result<Option<usize>, ClientHelloError> {
    if let Some(&content_type) = bytes.first() {
        if content_type != CONTENT_TYPE_HANDSHAKE {
            return Err(ClientHelloError::UnexpectedRecord { content_type });
        }
    }
    if let Some(&major) = bytes.get(1) {
        if major != 3 {
            return Err(ClientHelloError::RecordVersion { major });
        }
    }
    let Some(&[_, _, _, hi, lo]) = bytes.first_chunk::<RECORD_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 {
        return Err(ClientHelloError::EmptyRecord);
    }
    if len > MAX_RECORD_LEN {
        return Err(ClientHelloError::RecordTooLong { len });
    }
    Ok(Some(len))
}

/// Checks the handshake header as far as it is present; returns the whole message's length
/// (header included) once the header is complete.
fn message_len(handshake: &[u8]) -> Result<Option<usize>, ClientHelloError> {
    if let Some(&msg_type) = handshake.first() {
        if msg_type != HANDSHAKE_CLIENT_HELLO {
            return Err(ClientHelloError::NotClientHello { msg_type });
        }
    }
    let Some(&[_, a, b, c]) = handshake.first_chunk::<HANDSHAKE_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = HANDSHAKE_HEADER_LEN + u32::from_be_bytes([0, a, b, c]) as usize;
    if len > MAX_CLIENT_HELLO {
        return Err(ClientHelloError::TooLarge { len });
    }
    Ok(Some(len))
}

/// What a complete ClientHello says about server_name.
enum ServerName {
    /// No server_name extension (or no extensions at all).
    Absent,
    /// A server_name extension, with its host_name entry if it has one.
    Present(Option<String>),
}

/// Walks a complete ClientHello body (RFC 8446 §4.1.2) to its server_name extension.
fn parse_client_hello(body: &[u8]) -> Result<ServerName, ClientHelloError> {
    let mut hello = Cursor::new(body);
    let legacy_version = hello.u16().ok_or(malformed("legacy_version"))?;
    if legacy_version >> 8 != 3 {
        return Err(malformed("legacy_version"));
    }
    hello.take(RANDOM_LEN).ok_or(malformed("random"))?;
    let session_id = hello.vec8().ok_or(malformed("legacy_session_id"))?;
    if session_id.len() > MAX_SESSION_ID {
        return Err(malformed("legacy_session_id"));
    }
    let suites = hello.vec16().ok_or(malformed("cipher_suites"))?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(malformed("cipher_suites"));
    }
    let compression = hello
        .vec8()
        .ok_or(malformed("legacy_compression_methods"))?;
    if compression.is_empty() {
        return Err(malformed("legacy_compression_methods"));
    }
    // Extensions are optional in TLS 1.2 (RFC 5246 §7.4.1.2): a hello may end here.
    if hello.is_empty() {
        return Ok(ServerName::Absent);
    }
    let extensions = hello.vec16().ok_or(malformed("extensions"))?;
    if !hello.is_empty() {
        return Err(malformed("extensions"));
    }

    let mut extensions = Cursor::new(extensions);
    let mut server_name = ServerName::Absent;
    while !extensions.is_empty() {
        let kind = extensions.u16().ok_or(malformed("extension_type"))?;
        let data = extensions.vec16().ok_or(malformed("extension_data"))?;
        if kind == EXT_SERVER_NAME {
            if matches!(server_name, ServerName::Present(_)) {
                return Err(ClientHelloError::Duplicate {
                    what: "server_name extension",
                });
            }
            server_name = ServerName::Present(parse_server_name(data)?);
        }
    }
    Ok(server_name)
}

/// Reads a server_name extension's ServerNameList (RFC 6066 §3); returns its host_name.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let mut ext = Cursor::new(data);
    let list = ext.vec16().ok_or(malformed("server_name_list"))?;
    // A client's list is `ServerName server_name_list<1..2^16-1>`; only a server's reply is empty.
    if !ext.is_empty() || list.is_empty() {
        return Err(malformed("server_name_list"));
    }
    let mut list = Cursor::new(list);
    let mut host_name = None;
    while !list.is_empty() {
        let name_type = list.u8().ok_or(malformed("name_type"))?;
        // RFC 6066 requires every future name type to start with a 16-bit length too, so an
        // unknown entry can be skipped the same way.
        let name = list.vec16().ok_or(malformed("server_name entry"))?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host_name.is_some() {
                return Err(ClientHelloError::Duplicate { what: "host_name" });
            }
            host_name = Some(host_name_lowercase(name)?);
        }
    }
    Ok(host_name)
}

/// Validates a host_name as an ASCII DNS name without a trailing dot; returns it lowercased.
fn host_name_lowercase(name: &[u8]) -> Result<String, ClientHelloError> {
    let invalid = |reason| ClientHelloError::InvalidHostName { reason };
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return Err(invalid("length not in 1..=253"));
    }
    for label in name.split(|&b| b == b'.') {
        // Also rejects a leading, trailing or doubled dot: each yields an empty label.
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err(invalid("label length not in 1..=63"));
        }
        // Underscores are not valid in host names, but internal names use them and routing by
        // them is harmless.
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("character outside [A-Za-z0-9-_.]"));
        }
    }
    Ok(name
        .iter()
        .map(|&b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// Shorthand for the error of a field that cannot be read or is out of range.
fn malformed(field: &'static str) -> ClientHelloError {
    ClientHelloError::Malformed { field }
}

/// A reader over a complete byte string whose reads fail, rather than panic, past its end.
struct Cursor<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next `n` bytes, if that many remain.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&byte, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(byte)
    }

    fn u16(&mut self) -> Option<u16> {
        let (bytes, tail) = self.rest.split_first_chunk::<2>()?;
        self.rest = tail;
        Some(u16::from_be_bytes(*bytes))
    }

    /// A vector with an 8-bit length prefix (`opaque x<0..2^8-1>`).
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A vector with a 16-bit length prefix (`opaque x<0..2^16-1>`).
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

/// Picks the route for a (lowercased) SNI: an exact name first, then a one-label wildcard.
///
/// Both comparisons ignore ASCII case, so patterns need not be lowercased. `*.example.com`
/// matches `a.example.com`, not `example.com` nor `a.b.example.com`, as certificate wildcards
/// do (RFC 6125 §6.4.3). Among several matching patterns of a kind, the first listed wins.
pub fn route<'a, T>(sni: &str, routes: &'a [(String, T)]) -> Option<&'a T> {
    let exact = routes
        .iter()
        .find(|(pattern, _)| !pattern.starts_with("*.") && pattern.eq_ignore_ascii_case(sni));
    let wildcard = || {
        let (label, parent) = sni.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        routes.iter().find(|(pattern, _)| {
            pattern
                .strip_prefix("*.")
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case(parent))
        })
    };
    exact.or_else(wildcard).map(|(_, target)| target)
}

#[cfg(test)]
mod tests;
