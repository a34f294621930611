//! Tests of the ClientHello peek: real rustls hellos, every split point, re-framed records,
//! malformed inputs, the route matcher, and a seeded mutation loop.

use std::sync::Arc;

use rustls::pki_types::ServerName as TlsServerName;

use super::*;

// ---- real ClientHellos from rustls ----

/// The first flight of a rustls client: one record holding its ClientHello.
fn rustls_hello(server_name: TlsServerName<'static>, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), server_name).expect("client connection");
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire)
            .expect("writing to a Vec cannot fail");
    }
    wire
}

fn dns(name: &str) -> TlsServerName<'static> {
    TlsServerName::try_from(name.to_owned()).expect("valid DNS name")
}

/// A 253-character name of 63-character labels: the longest a host_name may be.
fn longest_name() -> String {
    let label = |c: char, n: usize| c.to_string().repeat(n);
    format!(
        "{}.{}.{}.{}",
        label('a', 63),
        label('b', 63),
        label('c', 63),
        label('d', 61)
    )
}

/// Real hellos with the SNI each should yield (`None`: no server_name at all).
fn real_hellos() -> Vec<(Vec<u8>, Option<String>)> {
    let long = longest_name();
    vec![
        (
            rustls_hello(dns("example.com"), &[]),
            Some("example.com".into()),
        ),
        (
            rustls_hello(dns("quay.example.com"), &[b"h2", b"http/1.1"]),
            Some("quay.example.com".into()),
        ),
        (rustls_hello(dns(&long), &[]), Some(long.clone())),
        (
            rustls_hello(
                TlsServerName::IpAddress("10.0.0.1".parse::<std::net::IpAddr>().unwrap().into()),
                &[b"h2"],
            ),
            None,
        ),
    ]
}

/// The verdict a complete real hello should get.
fn expected(sni: &Option<String>, consumed: usize) -> Peek {
    match sni {
        Some(name) => Peek::Done(ClientHelloInfo {
            sni: Some(name.clone()),
            consumed,
        }),
        None => Peek::NoSni,
    }
}

#[test]
fn real_hellos_yield_their_sni() {
    for (wire, sni) in real_hellos() {
        assert_eq!(wire.first(), Some(&22));
        assert_eq!(peek(&wire), Ok(expected(&sni, wire.len())), "{sni:?}");
    }
}

#[test]
fn every_split_point_needs_more_until_complete() {
    for (wire, sni) in real_hellos() {
        for n in 0..wire.len() {
            assert_eq!(peek(&wire[..n]), Ok(Peek::NeedMore), "{sni:?} prefix {n}");
        }
        assert_eq!(peek(&wire), Ok(expected(&sni, wire.len())));
    }
}

#[test]
fn bytes_after_the_hello_are_not_consumed() {
    for (wire, sni) in real_hellos() {
        // What a TLS 1.3 client may send next: a ChangeCipherSpec and early data.
        let mut longer = wire.clone();
        longer.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xAB, 0xCD]);
        assert_eq!(peek(&longer), Ok(expected(&sni, wire.len())));
    }
}

/// The handshake bytes carried by a run of complete records.
fn handshake_bytes(mut wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((&[_, _, _, hi, lo], rest)) = wire.split_first_chunk::<5>() {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        out.extend_from_slice(&rest[..len]);
        wire = &rest[len..];
    }
    out
}

/// Frames handshake bytes into handshake records of at most `size` bytes each.
fn reframe(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn hello_split_over_several_records() {
    for (wire, sni) in real_hellos() {
        let handshake = handshake_bytes(&wire);
        for size in [1, 7, 100] {
            let reframed = reframe(&handshake, size);
            assert_eq!(
                peek(&reframed),
                Ok(expected(&sni, reframed.len())),
                "{sni:?} in records of {size}"
            );
            for n in 0..reframed.len() {
                assert_eq!(
                    peek(&reframed[..n]),
                    Ok(Peek::NeedMore),
                    "size {size} prefix {n}"
                );
            }
        }
    }
}

#[test]
fn plain_protocols_are_not_tls_after_one_byte() {
    for text in [
        &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"\0",
    ] {
        assert_eq!(peek(&text[..1]), Ok(Peek::NotTls));
        assert_eq!(peek(text), Ok(Peek::NotTls));
    }
    // A handshake content type with a major version other than 3 (SSLv2-ish or random).
    assert_eq!(peek(&[22]), Ok(Peek::NeedMore));
    assert_eq!(peek(&[22, 2]), Ok(Peek::NotTls));
    assert_eq!(peek(&[22, 0x80, 0, 0]), Ok(Peek::NotTls));
}

// ---- hand-built ClientHellos for the edge cases ----

fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A server_name extension whose list holds `entries` of (name_type, name).
fn server_name(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (name_type, name) in entries {
        list.push(*name_type);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    extension(EXT_SERVER_NAME, &data)
}

/// A TLS 1.2-style ClientHello body; `extensions: None` leaves the block out entirely.
fn hello_body(extensions: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x5A; 32]);
    body.extend_from_slice(&[4, 1, 2, 3, 4]); // session id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xC0, 0x2F]); // two cipher suites
    body.extend_from_slice(&[1, 0]); // null compression
    if let Some(extensions) = extensions {
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
    }
    body
}

fn handshake(body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u32).to_be_bytes();
    let mut out = vec![HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]];
    out.extend_from_slice(body);
    out
}

/// One handshake record holding a ClientHello with `extensions`.
fn wire(extensions: Option<&[u8]>) -> Vec<u8> {
    reframe(&handshake(&hello_body(extensions)), MAX_RECORD_LEN)
}

fn wire_with_names(entries: &[(u8, &[u8])]) -> Vec<u8> {
    wire(Some(&server_name(entries)))
}

fn done(sni: Option<&str>, consumed: usize) -> Result<Peek, ClientHelloError> {
    Ok(Peek::Done(ClientHelloInfo {
        sni: sni.map(str::to_owned),
        consumed,
    }))
}

#[test]
fn host_name_is_lowercased() {
    let w = wire_with_names(&[(0, b"Quay.EXAMPLE.com")]);
    assert_eq!(peek(&w), done(Some("quay.example.com"), w.len()));
}

#[test]
fn server_name_among_other_extensions() {
    let mut extensions = extension(0x0010, b"\x00\x03\x02h2"); // ALPN
    extensions.extend(server_name(&[(0, b"a-b_c.example")]));
    extensions.extend(extension(0xFF01, b"\x00")); // renegotiation_info
    let w = wire(Some(&extensions));
    assert_eq!(peek(&w), done(Some("a-b_c.example"), w.len()));
}

#[test]
fn hellos_without_server_name() {
    assert_eq!(peek(&wire(None)), Ok(Peek::NoSni));
    assert_eq!(peek(&wire(Some(&[]))), Ok(Peek::NoSni));
    assert_eq!(
        peek(&wire(Some(&extension(0x000A, b"\x00\x02\x00\x1d")))),
        Ok(Peek::NoSni)
    );
}

#[test]
fn unknown_name_types_are_skipped() {
    let only_unknown = wire_with_names(&[(7, b"whatever")]);
    assert_eq!(peek(&only_unknown), done(None, only_unknown.len()));
    let mixed = wire_with_names(&[(7, b"\xFF\xFF"), (0, b"host.test")]);
    assert_eq!(peek(&mixed), done(Some("host.test"), mixed.len()));
}

#[test]
fn record_versions_3_x_are_accepted() {
    let mut w = wire_with_names(&[(0, b"x.test")]);
    for minor in [0, 1, 3, 4] {
        w[2] = minor;
        assert_eq!(peek(&w), done(Some("x.test"), w.len()));
    }
}

fn err(e: ClientHelloError) -> Result<Peek, ClientHelloError> {
    Err(e)
}

#[test]
fn invalid_host_names() {
    let label64 = "a".repeat(64);
    let too_long = format!("{}.{}", longest_name(), "e");
    for name in [
        &b""[..],
        b"example.com.",
        b".example.com",
        b"a..b",
        b"sp ace.test",
        b"caf\xC3\xA9.test",
        b"nul\0.test",
        b"star*.test",
        label64.as_bytes(),
        too_long.as_bytes(),
    ] {
        let result = peek(&wire_with_names(&[(0, name)]));
        assert!(
            matches!(result, Err(ClientHelloError::InvalidHostName { .. })),
            "{:?} → {result:?}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn malformed_client_hellos() {
    let body = hello_body(Some(&server_name(&[(0, b"ok.test")])));
    let field = |field| err(ClientHelloError::Malformed { field });
    let with_body = |body: &[u8]| peek(&reframe(&handshake(body), MAX_RECORD_LEN));

    // Each case edits the good body at a known offset (version 0, random 2, session id 34).
    let mut b = body.clone();
    b[0] = 2;
    assert_eq!(with_body(&b), field("legacy_version"));
    assert_eq!(with_body(&body[..20]), field("random"));

    let mut long_session = body[..34].to_vec();
    long_session.push(33);
    long_session.extend_from_slice(&[0; 33]);
    long_session.extend_from_slice(&body[39..]);
    assert_eq!(with_body(&long_session), field("legacy_session_id"));

    let mut b = body.clone();
    b[40] = 3; // cipher_suites length 4 → 3: odd
    assert_eq!(with_body(&b), field("cipher_suites"));

    let mut no_suites = body[..39].to_vec();
    no_suites.extend_from_slice(&[0, 0]);
    no_suites.extend_from_slice(&body[45..]);
    assert_eq!(with_body(&no_suites), field("cipher_suites"));

    let mut no_compression = body[..45].to_vec();
    no_compression.push(0);
    no_compression.extend_from_slice(&body[47..]);
    assert_eq!(
        with_body(&no_compression),
        field("legacy_compression_methods")
    );

    // A stray byte where the extensions block would start.
    let mut stray = hello_body(None);
    stray.push(0);
    assert_eq!(with_body(&stray), field("extensions"));

    // Extensions block longer than the rest of the body, and shorter (trailing junk).
    let mut b = body.clone();
    b[48] += 1;
    assert_eq!(with_body(&b), field("extensions"));
    let mut b = body.clone();
    b.push(0);
    assert_eq!(with_body(&b), field("extensions"));

    // One extension claiming more data than the block holds.
    let mut ext = extension(0x0010, b"h2");
    ext[3] = 9;
    assert_eq!(with_body(&hello_body(Some(&ext))), field("extension_data"));
    assert_eq!(with_body(&hello_body(Some(&[0]))), field("extension_type"));

    // server_name list problems.
    let cases: [(&[u8], &str); 4] = [
        (b"", "server_name_list"),
        (b"\x00\x00", "server_name_list"),
        (b"\x00\x05\x00\x00\x02ab\xFF", "server_name_list"),
        (b"\x00\x05\x00\x00\x05ab", "server_name entry"),
    ];
    for (data, name) in cases {
        assert_eq!(
            with_body(&hello_body(Some(&extension(0, data)))),
            field(name),
            "{data:?}"
        );
    }
}

#[test]
fn duplicates_are_errors() {
    let mut twice = server_name(&[(0, b"a.test")]);
    twice.extend(server_name(&[(0, b"b.test")]));
    assert_eq!(
        peek(&wire(Some(&twice))),
        err(ClientHelloError::Duplicate {
            what: "server_name extension"
        })
    );
    assert_eq!(
        peek(&wire_with_names(&[(0, b"a.test"), (0, b"b.test")])),
        err(ClientHelloError::Duplicate { what: "host_name" })
    );
}

#[test]
fn record_layer_errors_are_found_early() {
    // Handshake type 2 (ServerHello) is refused from its first byte.
    assert_eq!(
        peek(&[22, 3, 1, 0, 50, 2]),
        err(ClientHelloError::NotClientHello { msg_type: 2 })
    );
    // A claimed 16 MiB hello is refused from its length, before anything is buffered.
    assert_eq!(
        peek(&[22, 3, 1, 0x40, 0, 1, 0xFF, 0xFF, 0xFF]),
        err(ClientHelloError::TooLarge {
            len: 0xFF_FFFF + HANDSHAKE_HEADER_LEN
        })
    );
    // Exactly the limit is fine (and needs more), one byte over is not.
    let at_limit = (MAX_CLIENT_HELLO - HANDSHAKE_HEADER_LEN) as u32;
    let [_, a, b, c] = at_limit.to_be_bytes();
    assert_eq!(peek(&[22, 3, 1, 0x40, 0, 1, a, b, c]), Ok(Peek::NeedMore));
    let [_, a, b, c] = (at_limit + 1).to_be_bytes();
    assert_eq!(
        peek(&[22, 3, 1, 0x40, 0, 1, a, b, c]),
        err(ClientHelloError::TooLarge {
            len: MAX_CLIENT_HELLO + 1
        })
    );
    assert_eq!(peek(&[22, 3, 1, 0, 0]), err(ClientHelloError::EmptyRecord));
    assert_eq!(
        peek(&[22, 3, 1, 0x40, 1]),
        err(ClientHelloError::RecordTooLong { len: 0x4001 })
    );
    // A record claiming the maximum with only a few bytes present just needs more.
    assert_eq!(peek(&[22, 3, 1, 0x40, 0, 1, 0, 1]), Ok(Peek::NeedMore));
}

#[test]
fn later_records_must_continue_the_handshake() {
    let hs = handshake(&hello_body(Some(&server_name(&[(0, b"a.test")]))));
    let split = reframe(&hs, 10);
    // Turn the second record (offset 15) into application data, then into version 4.x.
    let mut bad_type = split.clone();
    bad_type[15] = 23;
    assert_eq!(
        peek(&bad_type[..16]),
        err(ClientHelloError::UnexpectedRecord { content_type: 23 })
    );
    assert_eq!(
        peek(&bad_type),
        err(ClientHelloError::UnexpectedRecord { content_type: 23 })
    );
    let mut bad_version = split.clone();
    bad_version[16] = 4;
    assert_eq!(
        peek(&bad_version),
        err(ClientHelloError::RecordVersion { major: 4 })
    );
}

#[test]
fn handshake_data_after_the_hello_is_an_error() {
    let mut hs = handshake(&hello_body(Some(&server_name(&[(0, b"a.test")]))));
    let hello_len = hs.len();
    hs.extend_from_slice(&[1, 0, 0, 0]);
    let w = reframe(&hs, MAX_RECORD_LEN);
    // Known from the headers alone, before the record is complete.
    assert_eq!(peek(&w[..9]), err(ClientHelloError::TrailingHandshake));
    assert_eq!(peek(&w), err(ClientHelloError::TrailingHandshake));
    // Ending exactly at a record boundary with more records following is fine.
    let mut w = reframe(&hs[..hello_len], MAX_RECORD_LEN);
    let consumed = w.len();
    w.extend(reframe(&[1, 0, 0, 0], 4));
    assert_eq!(peek(&w), done(Some("a.test"), consumed));
}

#[test]
fn record_count_is_capped() {
    // A hello long enough to need more than MAX_RECORDS 1-byte records.
    let mut extensions = server_name(&[(0, b"a.test")]);
    extensions.extend(extension(21, &[0; MAX_RECORDS])); // padding
    let hs = handshake(&hello_body(Some(&extensions)));

    let mut at_cap = reframe(&hs[..MAX_RECORDS - 1], 1);
    at_cap.extend(reframe(&hs[MAX_RECORDS - 1..], MAX_RECORD_LEN));
    assert_eq!(peek(&at_cap), done(Some("a.test"), at_cap.len()));

    let mut over_cap = reframe(&hs[..MAX_RECORDS], 1);
    let cap_reached = over_cap.len();
    over_cap.extend(reframe(&hs[MAX_RECORDS..], MAX_RECORD_LEN));
    // Refused as soon as the last allowed record ends without the hello.
    assert_eq!(peek(&over_cap[..cap_reached - 1]), Ok(Peek::NeedMore));
    assert_eq!(
        peek(&over_cap[..cap_reached]),
        err(ClientHelloError::TooManyRecords)
    );
    assert_eq!(peek(&over_cap), err(ClientHelloError::TooManyRecords));
}

#[test]
fn garbage_after_a_handshake_header_never_panics() {
    let mut state = 0x9E37_79B9_7F4A_7C15;
    for len in 0..600 {
        let mut buf = vec![22, 3, 1];
        buf.extend((0..len).map(|_| xorshift(&mut state) as u8));
        let _ = peek(&buf);
    }
}

// ---- route ----

#[test]
fn route_prefers_exact_names_then_one_label_wildcards() {
    let routes: Vec<(String, &str)> = vec![
        ("*.example.com".into(), "wild"),
        ("Clair.Example.com".into(), "clair"),
        ("*.b.example.com".into(), "deeper"),
        ("*.example.com".into(), "second wild"),
    ];
    assert_eq!(route("clair.example.com", &routes), Some(&"clair"));
    assert_eq!(route("CLAIR.example.COM", &routes), Some(&"clair"));
    assert_eq!(route("quay.example.com", &routes), Some(&"wild"));
    assert_eq!(route("QUAY.EXAMPLE.COM", &routes), Some(&"wild"));
    assert_eq!(route("a.b.example.com", &routes), Some(&"deeper"));
    assert_eq!(route("x.a.b.example.com", &routes), None);
    assert_eq!(route("example.com", &routes), None);
    assert_eq!(route(".example.com", &routes), None);
    assert_eq!(route("example.org", &routes), None);
    assert_eq!(route("", &routes), None);
    assert_eq!(route::<u8>("a.example.com", &[]), None);
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

/// One random edit of the kinds that find parser bugs: bit flips, truncation, length fields
/// set to edge values, insertions and deletions, re-framing.
fn mutate(state: &mut u64, input: &mut Vec<u8>) {
    let len = input.len();
    match below(state, 7) {
        0 => {
            for _ in 0..=below(state, 4) {
                let bit = below(state, len * 8);
                if let Some(byte) = input.get_mut(bit / 8) {
                    *byte ^= 1 << (bit % 8);
                }
            }
        }
        1 => input.truncate(below(state, len + 1)),
        2 | 3 => {
            // Length fields sit at the record header, the handshake header and throughout the
            // body; hitting random offsets with edge values covers them all.
            let at = if below(state, 2) == 0 {
                [3, 6, 7, 43, 44][below(state, 5)]
            } else {
                below(state, len)
            };
            let value: u16 = match below(state, 6) {
                0 => 0,
                1 => 1,
                2 => 0xFFFF,
                3 => len as u16,
                4 => (len as u16).wrapping_sub(5),
                _ => xorshift(state) as u16,
            };
            for (i, byte) in value.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = input.get_mut(at + i) {
                    *slot = byte;
                }
            }
        }
        4 => {
            let at = below(state, len + 1);
            let extra: Vec<u8> = (0..=below(state, 8))
                .map(|_| xorshift(state) as u8)
                .collect();
            input.splice(at..at, extra);
        }
        5 => {
            let from = below(state, len + 1);
            let to = (from + below(state, 16)).min(len);
            input.drain(from..to);
        }
        _ => {
            let handshake = handshake_bytes_lenient(input);
            *input = reframe(&handshake, 1 + below(state, 300));
        }
    }
}

/// Like `handshake_bytes`, but tolerant of the broken framing a mutation leaves behind.
fn handshake_bytes_lenient(mut wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((&[_, _, _, hi, lo], rest)) = wire.split_first_chunk::<5>() {
        let len = usize::from(u16::from_be_bytes([hi, lo])).min(rest.len());
        out.extend_from_slice(&rest[..len]);
        wire = &rest[len..];
    }
    out
}

#[test]
fn mutated_hellos_never_panic_and_verdicts_are_stable() {
    let mut seeds: Vec<Vec<u8>> = real_hellos().into_iter().map(|(w, _)| w).collect();
    seeds.push(wire_with_names(&[(0, b"a.test"), (7, b"x")]));
    seeds.push(reframe(&handshake_bytes(&seeds[0]), 9));

    let mut state = 0x5EED_0F5F_1CE2_u64;
    let mut verdicts = [0usize; 4];
    for case in 0..20_000 {
        let mut input = seeds[case % seeds.len()].clone();
        for _ in 0..=below(&mut state, 3) {
            mutate(&mut state, &mut input);
        }
        let verdict = peek(&input);
        if let Ok(Peek::Done(info)) = &verdict {
            assert!(info.consumed <= input.len(), "case {case}");
            // The records it consumed decide the same verdict on their own.
            assert_eq!(peek(&input[..info.consumed]), verdict, "case {case}");
        }
        // A final verdict on a prefix never changes as more bytes arrive.
        let prefix = &input[..below(&mut state, input.len() + 1)];
        let early = peek(prefix);
        if early != Ok(Peek::NeedMore) {
            assert_eq!(early, verdict, "case {case}: prefix of {}", prefix.len());
        }
        verdicts[match verdict {
            Ok(Peek::Done(_)) => 0,
            Ok(Peek::NeedMore) => 1,
            Ok(_) => 2,
            Err(_) => 3,
        }] += 1;
    }
    // The mutations must exercise every outcome, or the loop proves little.
    assert!(verdicts.iter().all(|&n| n > 100), "{verdicts:?}");
}
