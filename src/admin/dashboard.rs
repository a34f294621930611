//! The dashboard at `GET /`: one page embedded in the binary (`dashboard.html`, its CSS and JS
//! inline), which reads `/status` every second and posts backend actions from the operator's
//! browser. It needs no file, no network and no other endpoint than the API's own.
//!
//! Its Content-Security-Policy allows exactly the page's own inline `<script>` and `<style>`,
//! named by SHA-256, and requests to its own origin: should a backend address or an error
//! message ever reach the DOM as markup, no script it carries could run or talk elsewhere.

use std::sync::LazyLock;

use base64::Engine;
use sha2::{Digest, Sha256};

/// The page, as served.
pub(super) const PAGE: &str = include_str!("dashboard.html");

/// The `Content-Security-Policy` of [`PAGE`], computed once from the page itself so the
/// hashes can never go stale when the page is edited.
pub(super) static POLICY: LazyLock<String> = LazyLock::new(|| policy(PAGE));

/// The policy for `page`: nothing by default; its inline scripts and styles by hash; `fetch`
/// to its own origin; `data:` images (the empty favicon, so the browser asks for no
/// `/favicon.ico`); no framing, no `<base>`, no form submission (the token form is handled in
/// script).
fn policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hashes(page, "script"),
        inline_hashes(page, "style"),
    )
}

/// `'sha256-…'` of every `<tag>…</tag>` element's content in `page` (the page writes them
/// without attributes), space-separated; `'none'` when there is none.
fn inline_hashes(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut hashes = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        hashes.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end + close.len()..];
    }
    if hashes.is_empty() {
        "'none'".to_owned()
    } else {
        hashes.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_inline_script_and_style_by_hash() {
        let page = "<style>a{}</style><p>x</p><script>go()</script>";
        let p = policy(page);
        let sha = |s: &str| {
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s))
            )
        };
        assert!(p.contains(&format!("script-src {};", sha("go()"))), "{p}");
        assert!(p.contains(&format!("style-src {};", sha("a{}"))), "{p}");
        assert!(p.starts_with("default-src 'none';"), "{p}");
        assert_eq!(inline_hashes("<p>no script</p>", "script"), "'none'");
        // A known vector: SHA-256 of the empty string.
        assert_eq!(
            inline_hashes("<script></script>", "script"),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }

    #[test]
    fn the_page_has_one_inline_script_and_one_inline_style_and_nothing_else_runs() {
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(
            PAGE.matches("<script").count(),
            1,
            "a <script> with attributes"
        );
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert_eq!(
            PAGE.matches("<style").count(),
            1,
            "a <style> with attributes"
        );
        // Inline handlers and style attributes would be refused by the policy.
        for banned in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " style=",
            "javascript:",
        ] {
            assert!(!PAGE.contains(banned), "the page has {banned:?}");
        }
        for needed in ["script-src 'sha256-", "style-src 'sha256-"] {
            assert!(POLICY.contains(needed), "{needed} missing from {}", *POLICY);
        }
    }

    /// Served offline: no URL with a scheme or a network path anywhere (scripts, styles,
    /// images, fetches, links), and every `src`/`href` is `data:`.
    #[test]
    fn the_page_makes_no_external_request() {
        let lower = PAGE.to_ascii_lowercase();
        for banned in [
            "http:", "https:", "//", "@import", "url(", "<iframe", "<object", "<embed", "<img",
        ] {
            assert!(!lower.contains(banned), "the page contains {banned:?}");
        }
        for attr in ["src=", "href=", "action="] {
            for (at, _) in lower.match_indices(attr) {
                let value = lower[at + attr.len()..].trim_start_matches(['"', '\'']);
                assert!(
                    value.starts_with("data:"),
                    "{attr} that is not data: at byte {at}"
                );
            }
        }
        // Every fetch goes to a path of this origin.
        for (at, _) in lower.match_indices("fetch(") {
            let arg = lower[at + "fetch(".len()..].trim_start();
            assert!(
                arg.starts_with("\"/") || arg.starts_with("url"),
                "fetch of {:?}",
                &arg[..arg.len().min(30)]
            );
        }
    }
}
