//! Fuzzes the ClientHello peek and the SNI route matcher with arbitrary bytes.
//!
//! Beyond "never panics", it checks the properties the listener relies on: `consumed` stays
//! inside the buffer, the consumed records alone give the same verdict, and a final verdict
//! on a prefix never changes when more bytes arrive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use splicer::net::client_hello::{peek, route, Peek};

fuzz_target!(|data: &[u8]| {
    let verdict = peek(data);
    if let Ok(Peek::Done(info)) = &verdict {
        assert!(info.consumed <= data.len());
        assert_eq!(peek(&data[..info.consumed]), verdict);
        if let Some(sni) = &info.sni {
            let routes = routes();
            if let Some(&index) = route(sni, &routes) {
                assert!(matches_rule(&routes[index].0, sni));
            }
        }
    }

    // A split point derived from the input, so the fuzzer steers it too.
    let split = data
        .last()
        .map_or(0, |&b| usize::from(b) * data.len() / 256);
    let early = peek(&data[..split]);
    if early != Ok(Peek::NeedMore) {
        assert_eq!(early, verdict);
    }

    // The matcher also sees names peek would never produce.
    let text = String::from_utf8_lossy(data);
    let _ = route(&text, &routes());
});

/// The matching rule restated independently: exact (any case), or `*.` plus the parent of a
/// name whose first label is non-empty.
fn matches_rule(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        None => pattern.eq_ignore_ascii_case(sni),
        Some(suffix) => sni.split_once('.').is_some_and(|(label, parent)| {
            !label.is_empty() && parent.eq_ignore_ascii_case(suffix)
        }),
    }
}

/// A fixed route table covering exact and wildcard patterns in mixed case.
fn routes() -> Vec<(String, usize)> {
    [
        "clair.example.com",
        "*.example.com",
        "*.A.Example.COM",
        "x.a.example.com",
    ]
    .iter()
    .enumerate()
    .map(|(index, pattern)| ((*pattern).to_owned(), index))
    .collect()
}
