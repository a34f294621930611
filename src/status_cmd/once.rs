//! `splicer status` run once: the text for stdout and the verdict of one `/status`, and
//! `--ready`'s one question to `/ready`. The binary only prints and exits.

use std::time::Duration;

use hyper::Method;

use super::{admin_url, fetch_with_json, render, request, Verdict, DEFAULT_TIMEOUT};

/// Bound of `status --ready`: under the 5 s a container health check is usually given.
pub const READY_TIMEOUT: Duration = Duration::from_secs(4);

/// `splicer status [--json]`: what goes to stdout (the table; with `--json` the document as
/// sent, or one naming the error so a script still reads JSON) and the verdict (exit code and
/// what is wrong, for stderr).
pub async fn once(admin: &str, json: bool) -> (String, Verdict) {
    match fetch_with_json(admin, DEFAULT_TIMEOUT).await {
        Ok((doc, raw)) => {
            let text = if json {
                let pretty = serde_json::to_string_pretty(&raw).unwrap_or_else(|_| raw.to_string());
                format!("{pretty}\n")
            } else {
                render(&doc)
            };
            (text, Verdict::of(&doc))
        }
        Err(e) => {
            let verdict = Verdict::failed(&e);
            let text = if json {
                let url = admin_url(admin).unwrap_or_else(|_| admin.to_owned());
                format!(
                    "{}\n",
                    serde_json::json!({"error": verdict.summary(), "admin": url})
                )
            } else {
                String::new()
            };
            (text, verdict)
        }
    }
}

/// `splicer status --ready`: `Ok` when `/ready` answers 200; anything else (another status,
/// no answer, a bad URL) is the line for stderr, and exit 1 (the one code a container health
/// check acts on).
pub async fn ready(admin: &str) -> Result<(), String> {
    match request(admin, Method::GET, "/ready", None, READY_TIMEOUT).await {
        Ok((200, _)) => Ok(()),
        Ok((code, body)) => Err(format!(
            "not ready ({code}): {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}
