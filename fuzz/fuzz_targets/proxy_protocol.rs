//! Fuzzes the PROXY protocol v1/v2 parser with arbitrary bytes.
//!
//! Beyond "never panics", it checks the properties the listener relies on: `consumed` stays
//! inside the buffer, the header bytes alone give the same verdict, a final verdict on a prefix
//! never changes when more bytes arrive, and whatever is accepted re-encodes and parses back
//! to the same header in both versions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use splicer::net::proxy_protocol::{encode, parse, Parsed, Version};

fuzz_target!(|data: &[u8]| {
    let verdict = parse(data);
    if let Ok(Parsed::Done { header, consumed }) = verdict {
        assert!(consumed <= data.len());
        assert_eq!(parse(&data[..consumed]), verdict);
        for version in [Version::V1, Version::V2] {
            let bytes = encode(version, &header);
            assert_eq!(
                parse(&bytes),
                Ok(Parsed::Done {
                    header,
                    consumed: bytes.len()
                })
            );
        }
    }

    // A split point derived from the input, so the fuzzer steers it too.
    let split = data
        .last()
        .map_or(0, |&b| usize::from(b) * data.len() / 256);
    let early = parse(&data[..split]);
    if early != Ok(Parsed::NeedMore) {
        assert_eq!(early, verdict);
    }
});
