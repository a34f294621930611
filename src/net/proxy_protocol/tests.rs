//! Tests of PROXY protocol encoding and parsing: round trips, every prefix, vectors from the
//! spec and from haproxy, malformed headers, and a seeded mutation loop.

use std::net::IpAddr;

use super::*;

fn tcp(src: &str, dst: &str) -> ProxyHeader {
    ProxyHeader::Tcp {
        src: src.parse().expect("valid socket address"),
        dst: dst.parse().expect("valid socket address"),
    }
}

fn done(header: ProxyHeader, consumed: usize) -> Result<Parsed, ProxyProtocolError> {
    Ok(Parsed::Done { header, consumed })
}

fn field(field: &'static str) -> Result<Parsed, ProxyProtocolError> {
    Err(ProxyProtocolError::V1Field { field })
}

fn headers() -> Vec<ProxyHeader> {
    vec![
        ProxyHeader::Local,
        tcp("1.2.3.4:1111", "5.6.7.8:2222"),
        tcp("0.0.0.0:0", "255.255.255.255:65535"),
        tcp("[2001:db8::1]:443", "[fe80::a:b:c:d]:8443"),
        tcp("[::]:0", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
    ]
}

#[test]
fn round_trips() {
    for version in [Version::V1, Version::V2] {
        for header in headers() {
            let bytes = encode(version, &header);
            assert_eq!(
                parse(&bytes),
                done(header, bytes.len()),
                "{version:?} {header:?}"
            );
            // What follows the header belongs to the connection.
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"\x16\x03\x01\x02\x00\x01");
            assert_eq!(parse(&longer), done(header, bytes.len()));
        }
    }
}

#[test]
fn mixed_families_are_sent_as_mapped_ipv6() {
    let mixed = tcp("192.0.2.7:5000", "[2001:db8::2]:443");
    let mapped = tcp("[::ffff:192.0.2.7]:5000", "[2001:db8::2]:443");
    let v1 = encode(Version::V1, &mixed);
    assert_eq!(v1, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::2 5000 443\r\n");
    assert_eq!(parse(&v1), done(mapped, v1.len()));
    let v2 = encode(Version::V2, &mixed);
    assert_eq!(v2.get(13), Some(&TCP_OVER_IPV6));
    assert_eq!(parse(&v2), done(mapped, v2.len()));
    // And the other way round.
    let back = tcp("[2001:db8::2]:443", "192.0.2.7:5000");
    assert_eq!(
        parse(&encode(Version::V2, &back)),
        done(tcp("[2001:db8::2]:443", "[::ffff:192.0.2.7]:5000"), 52)
    );
}

#[test]
fn encodings_are_exact() {
    assert_eq!(
        encode(Version::V1, &tcp("1.2.3.4:1111", "5.6.7.8:2222")),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
    );
    assert_eq!(
        encode(Version::V1, &tcp("[2001:db8::1]:1", "[::1]:2")),
        b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    );
    assert_eq!(
        encode(Version::V1, &ProxyHeader::Local),
        b"PROXY UNKNOWN\r\n"
    );

    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(encode(Version::V2, &ProxyHeader::Local), local);

    let mut v4 = V2_SIGNATURE.to_vec();
    v4.extend_from_slice(&[
        0x21, 0x11, 0x00, 0x0C, 1, 2, 3, 4, 5, 6, 7, 8, 0x04, 0x57, 0x08, 0xAE,
    ]);
    assert_eq!(
        encode(Version::V2, &tcp("1.2.3.4:1111", "5.6.7.8:2222")),
        v4
    );

    let mut v6 = V2_SIGNATURE.to_vec();
    v6.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
    v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    v6.extend_from_slice(&[0, 80, 0x01, 0xBB]);
    assert_eq!(
        encode(Version::V2, &tcp("[2001:db8::1]:80", "[::2]:443")),
        v6
    );
}

#[test]
fn every_prefix_needs_more() {
    let mut encodings: Vec<Vec<u8>> = Vec::new();
    for header in headers() {
        encodings.push(encode(Version::V1, &header));
        encodings.push(encode(Version::V2, &header));
    }
    encodings.push(with_tlvs(&tlv_block()));
    encodings.push(longest_v1_line());
    for bytes in encodings {
        for n in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..n]),
                Ok(Parsed::NeedMore),
                "{bytes:?} prefix {n}"
            );
        }
        assert!(matches!(parse(&bytes), Ok(Parsed::Done { .. })));
    }
}

// ---- known vectors ----

/// The spec's worst case (§2.1): UNKNOWN with two full IPv6 addresses and ports, 107 bytes.
fn longest_v1_line() -> Vec<u8> {
    let ip = "ffff:f...f:ffff".replace("f...f", &["ffff"; 6].join(":"));
    format!("PROXY UNKNOWN {ip} {ip} 65535 65535\r\n").into_bytes()
}

#[test]
fn spec_v1_examples() {
    let longest = longest_v1_line();
    assert_eq!(longest.len(), V1_MAX_LEN);
    assert_eq!(parse(&longest), done(ProxyHeader::Local, V1_MAX_LEN));

    let line = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(
        parse(line),
        done(
            tcp("255.255.255.255:65535", "255.255.255.255:65535"),
            line.len()
        )
    );
    let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY TCP6 {ip} {ip} 65535 65535\r\n");
    let full = format!("[{ip}]:65535");
    assert_eq!(parse(line.as_bytes()), done(tcp(&full, &full), 104));
    // "the receiver must ignore anything presented before the CRLF" after UNKNOWN.
    assert_eq!(parse(b"PROXY UNKNOWN\r\n"), done(ProxyHeader::Local, 15));
    assert_eq!(
        parse(b"PROXY UNKNOWN whatever\r\n"),
        done(ProxyHeader::Local, 24)
    );
    // Upper-case hex and IPv4-in-IPv6 are valid inet_pton input.
    assert_eq!(
        parse(b"PROXY TCP6 2001:DB8::A ::FFFF:10.0.0.1 0 1\r\n"),
        done(tcp("[2001:db8::a]:0", "[::ffff:10.0.0.1]:1"), 44)
    );
}

#[test]
fn haproxy_v2_capture() {
    // haproxy relaying curl from 172.19.0.1:42578 to 172.19.0.3:80, request bytes following.
    let bytes = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x11\x00\x0c\
                  \xac\x13\x00\x01\xac\x13\x00\x03\xa6\x52\x00\x50GET / HTTP/1.1\r\n";
    assert_eq!(
        parse(bytes),
        done(tcp("172.19.0.1:42578", "172.19.0.3:80"), 28)
    );
}

/// Two TLVs as haproxy sends them: ALPN and authority.
fn tlv_block() -> Vec<u8> {
    let mut tlvs = vec![0x01, 0x00, 0x02];
    tlvs.extend_from_slice(b"h2");
    tlvs.extend_from_slice(&[0x02, 0x00, 0x0B]);
    tlvs.extend_from_slice(b"example.com");
    tlvs
}

/// A v2 PROXY TCP4 header (10.0.0.1:1000 → 10.0.0.2:443) followed by `tlvs`.
fn with_tlvs(tlvs: &[u8]) -> Vec<u8> {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[0x21, 0x11]);
    bytes.extend_from_slice(&((IPV4_BLOCK_LEN + tlvs.len()) as u16).to_be_bytes());
    bytes.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xE8, 0x01, 0xBB]);
    bytes.extend_from_slice(tlvs);
    bytes
}

/// A v2 header with `ver_cmd`, `family` and `block` as its payload.
fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[ver_cmd, family]);
    bytes.extend_from_slice(&(block.len() as u16).to_be_bytes());
    bytes.extend_from_slice(block);
    bytes
}

#[test]
fn v2_tlvs_are_skipped_but_checked() {
    let tlvs = tlv_block();
    let bytes = with_tlvs(&tlvs);
    assert_eq!(
        parse(&bytes),
        done(tcp("10.0.0.1:1000", "10.0.0.2:443"), 28 + tlvs.len())
    );
    // A TLV claiming one byte more than the header holds; offset is the TLV's from the start.
    assert_eq!(
        parse(&with_tlvs(&[0x01, 0x00, 0x03, b'h', b'2'])),
        Err(ProxyProtocolError::V2Tlv { offset: 28 })
    );
    // A dangling partial TLV header.
    assert_eq!(
        parse(&with_tlvs(&[0x04, 0x00])),
        Err(ProxyProtocolError::V2Tlv { offset: 28 })
    );
    // The TLV allowance is exactly V2_MAX_TLV_LEN bytes.
    let mut max = vec![0x04];
    max.extend_from_slice(&((V2_MAX_TLV_LEN - 3) as u16).to_be_bytes());
    max.resize(V2_MAX_TLV_LEN, 0);
    assert!(matches!(parse(&with_tlvs(&max)), Ok(Parsed::Done { .. })));
    max.push(0);
    assert_eq!(
        parse(&with_tlvs(&max)),
        Err(ProxyProtocolError::V2TooLong {
            len: IPV4_BLOCK_LEN + V2_MAX_TLV_LEN + 1,
            max: IPV4_BLOCK_LEN + V2_MAX_TLV_LEN
        })
    );
}

#[test]
fn v2_local_and_unsupported_families_use_the_real_addresses() {
    let addresses = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
    // LOCAL discards whatever block it carries, including none at all.
    assert_eq!(
        parse(&v2(0x20, 0x11, &addresses)),
        done(ProxyHeader::Local, 28)
    );
    assert_eq!(parse(&v2(0x20, 0x11, &[])), done(ProxyHeader::Local, 16));
    assert_eq!(
        parse(&v2(0x20, 0x00, &[1, 2, 3])),
        done(ProxyHeader::Local, 19)
    );
    // PROXY over UNSPEC, UNIX or UDP: accepted, addresses ignored.
    assert_eq!(parse(&v2(0x21, 0x00, &[])), done(ProxyHeader::Local, 16));
    assert_eq!(
        parse(&v2(0x21, 0x31, &[0; 216])),
        done(ProxyHeader::Local, 232)
    );
    assert_eq!(
        parse(&v2(0x21, 0x12, &addresses)),
        done(ProxyHeader::Local, 28)
    );
    assert_eq!(
        parse(&v2(0x21, 0x10, &addresses)),
        done(ProxyHeader::Local, 28)
    );
}

// ---- malformed ----

#[test]
fn not_proxy_is_told_from_the_first_bytes() {
    for bytes in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01\x02\x00",
        b"SSH-2.0-x",
        b"proxy TCP4",
        b"\0",
    ] {
        assert_eq!(parse(&bytes[..1]), Err(ProxyProtocolError::NotProxy));
        assert_eq!(parse(bytes), Err(ProxyProtocolError::NotProxy));
    }
    assert_eq!(parse(b"PROXY"), Ok(Parsed::NeedMore));
    assert_eq!(parse(b"PROXX"), Err(ProxyProtocolError::NotProxy));
    assert_eq!(parse(b"PROXYTCP4"), Err(ProxyProtocolError::NotProxy));
    assert_eq!(parse(b"POST / HTTP/1.1"), Err(ProxyProtocolError::NotProxy));
    assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::NeedMore));
    assert_eq!(parse(b"\r\n\r\nX"), Err(ProxyProtocolError::NotProxy));
    assert_eq!(
        parse(b"\r\n\r\n\0\r\nQUIX"),
        Err(ProxyProtocolError::NotProxy)
    );
}

#[test]
fn bad_v2_headers() {
    let addresses = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
    // Version and command are judged from byte 13 alone.
    let mut sig = V2_SIGNATURE.to_vec();
    sig.push(0x11);
    assert_eq!(
        parse(&sig),
        Err(ProxyProtocolError::V2Version { version: 1 })
    );
    assert_eq!(
        parse(&v2(0x31, 0x11, &addresses)),
        Err(ProxyProtocolError::V2Version { version: 3 })
    );
    assert_eq!(
        parse(&v2(0x22, 0x11, &addresses)),
        Err(ProxyProtocolError::V2Command { command: 2 })
    );
    for family in [0x41, 0x13, 0x03, 0xF1] {
        assert_eq!(
            parse(&v2(0x21, family, &addresses)[..14]),
            Err(ProxyProtocolError::V2Family { byte: family })
        );
    }
    assert_eq!(
        parse(&v2(0x21, 0x11, &addresses[..11])),
        Err(ProxyProtocolError::V2Short { len: 11, need: 12 })
    );
    assert_eq!(
        parse(&v2(0x21, 0x21, &addresses)),
        Err(ProxyProtocolError::V2Short { len: 12, need: 36 })
    );
    // An absurd length is refused from the header, before any payload is buffered.
    let mut huge = V2_SIGNATURE.to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    assert_eq!(
        parse(&huge),
        Err(ProxyProtocolError::V2TooLong {
            len: 0xFFFF,
            max: 12 + V2_MAX_TLV_LEN
        })
    );
}

#[test]
fn bad_v1_lines() {
    let cases: &[(&[u8], Result<Parsed, ProxyProtocolError>)] = &[
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            field("destination port"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            field("destination port"),
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", field("field count")),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", field("field count")),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            field("field count"),
        ),
        (b"PROXY TCP4\r\n", field("field count")),
        (b"PROXY \r\n", field("protocol")),
        (b"PROXY\r\n", Err(ProxyProtocolError::NotProxy)),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", field("protocol")),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", field("protocol")),
        (b"PROXY UNKNOWNX\r\n", field("protocol")),
        (b"PROXY UNKNOWN a\rb\r\n", field("UNKNOWN line")),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", field("protocol")),
        (
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            field("source address"),
        ),
        (
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            field("destination address"),
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", field("source port")),
        (b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", field("protocol")),
        (
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            field("source address"),
        ),
        (
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            field("source address"),
        ),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", field("source address")),
        (b"PROXY TCP4 ::1 ::2 1 2\r\n", field("source address")),
        (
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            field("source address"),
        ),
        (
            b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n",
            field("destination address"),
        ),
        (
            b"PROXY TCP6 ::1 1::2::3 1 2\r\n",
            field("destination address"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            field("source port"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            field("source port"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
            field("source port"),
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", field("source port")),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
            field("source port"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x50\r\n",
            field("destination port"),
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
            field("destination port"),
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(
            &parse(line),
            expected,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    // Ports at the edges of the range are fine, as is a lone zero.
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n"),
        done(tcp("1.2.3.4:0", "5.6.7.8:65535"), 36)
    );
}

#[test]
fn bad_v1_lines_are_refused_before_the_crlf() {
    for (prefix, name) in [
        (&b"PROXY TCP7"[..], "protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 70000", "source port"),
        (b"PROXY TCP4 1.2.3.4:", "source address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "field count"),
        (
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255x",
            "source address",
        ),
    ] {
        assert_eq!(
            parse(prefix),
            field(name),
            "{:?}",
            String::from_utf8_lossy(prefix)
        );
    }
}

#[test]
fn overlong_v1_lines() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(V1_MAX_LEN - 1, b'a');
    assert_eq!(parse(&line), Ok(Parsed::NeedMore));
    line.push(b'\r');
    assert_eq!(parse(&line), Err(ProxyProtocolError::V1TooLong));
    line.push(b'\n');
    assert_eq!(parse(&line), Err(ProxyProtocolError::V1TooLong));
    // The longest valid line, shifted by one byte, no longer fits.
    let mut longer = longest_v1_line();
    longer.insert(14, b'f');
    assert_eq!(parse(&longer), Err(ProxyProtocolError::V1TooLong));
}

// ---- seeded mutation ----

/// xorshift64: a tiny deterministic generator, so a failing case replays from its seed.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn below(state: &mut u64, n: usize) -> usize {
    (xorshift(state) % n.max(1) as u64) as usize
}

fn random_address(state: &mut u64) -> SocketAddr {
    let ip: IpAddr = match below(state, 3) {
        0 => Ipv4Addr::from(xorshift(state) as u32).into(),
        1 => {
            Ipv6Addr::from((u128::from(xorshift(state)) << 64) | u128::from(xorshift(state))).into()
        }
        // Sparse addresses exercise "::" compression.
        _ => Ipv6Addr::from(u128::from(xorshift(state) as u16) << (16 * below(state, 8))).into(),
    };
    SocketAddr::new(ip, xorshift(state) as u16)
}

fn random_header(state: &mut u64) -> ProxyHeader {
    match below(state, 8) {
        0 => ProxyHeader::Local,
        _ => ProxyHeader::Tcp {
            src: random_address(state),
            dst: random_address(state),
        },
    }
}

/// One random edit: bit flips, byte replacement with protocol-relevant characters,
/// truncation, insertion, deletion, or v2 length fields set to edge values.
fn mutate(state: &mut u64, input: &mut Vec<u8>) {
    let len = input.len();
    match below(state, 6) {
        0 => {
            let bit = below(state, len * 8);
            if let Some(byte) = input.get_mut(bit / 8) {
                *byte ^= 1 << (bit % 8);
            }
        }
        1 => {
            let alphabet = b" \r\n.:0123456789abcdefPROXYTCP46UNKW+-\0\xFF";
            let replacement = alphabet[below(state, alphabet.len())];
            if let Some(byte) = input.get_mut(below(state, len)) {
                *byte = replacement;
            }
        }
        2 => input.truncate(below(state, len + 1)),
        3 => {
            let at = below(state, len + 1);
            let extra: Vec<u8> = (0..=below(state, 4))
                .map(|_| xorshift(state) as u8)
                .collect();
            input.splice(at..at, extra);
        }
        4 => {
            let from = below(state, len + 1);
            let to = (from + 1 + below(state, 4)).min(len);
            input.drain(from..to);
        }
        _ => {
            let value: u16 = [0, 11, 12, 35, 36, 1036, 1037, 0xFFFF][below(state, 8)];
            for (i, byte) in value.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = input.get_mut(14 + i) {
                    *slot = byte;
                }
            }
        }
    }
}

#[test]
fn mutated_headers_never_panic_and_verdicts_are_stable() {
    let mut state = 0x0BAD_5EED_1234_5678_u64;
    let mut verdicts = [0usize; 3];
    for case in 0..20_000 {
        let header = random_header(&mut state);
        let version = if below(&mut state, 2) == 0 {
            Version::V1
        } else {
            Version::V2
        };
        let mut input = encode(version, &header);
        if below(&mut state, 4) == 0 {
            input = with_tlvs(&tlv_block());
        }
        input.extend_from_slice(b"\x16\x03\x01");
        // Every random header round-trips before it is damaged.
        let clean = parse(&input);
        assert!(
            matches!(clean, Ok(Parsed::Done { .. })),
            "case {case}: {clean:?}"
        );
        for _ in 0..=below(&mut state, 2) {
            mutate(&mut state, &mut input);
        }

        let verdict = parse(&input);
        if let Ok(Parsed::Done { header, consumed }) = verdict {
            assert!(consumed <= input.len(), "case {case}");
            assert_eq!(parse(&input[..consumed]), verdict, "case {case}");
            // Whatever was accepted can be re-sent in either version and reads back the same.
            for version in [Version::V1, Version::V2] {
                let again = encode(version, &header);
                assert_eq!(parse(&again), done(header, again.len()), "case {case}");
            }
        }
        // A final verdict on a prefix never changes as more bytes arrive.
        let prefix = &input[..below(&mut state, input.len() + 1)];
        let early = parse(prefix);
        if early != Ok(Parsed::NeedMore) {
            assert_eq!(early, verdict, "case {case}: prefix of {}", prefix.len());
        }
        verdicts[match verdict {
            Ok(Parsed::Done { .. }) => 0,
            Ok(Parsed::NeedMore) => 1,
            Err(_) => 2,
        }] += 1;
    }
    // The mutations must exercise every outcome, or the loop proves little.
    assert!(verdicts.iter().all(|&n| n > 100), "{verdicts:?}");
}
