//! `splicer upgrade`: asks a running splicer for a binary upgrade through its admin API
//! (`POST /upgrade`) and says what came of it, with the exit codes of `splicer backend`.

use std::path::Path;
use std::time::Duration;

use crate::backend_cmd::{Failure, EXIT_REFUSED, EXIT_USAGE};
use crate::status_cmd::{self, StatusCmdError};

/// Reads the token (when a file is named), sends `POST /upgrade` and waits up to `timeout` for
/// the answer: the line for stdout on success.
pub async fn run(
    admin: &str,
    token_file: Option<&Path>,
    timeout: Duration,
) -> Result<String, Failure> {
    let token = match token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                return Err(Failure {
                    code: EXIT_USAGE,
                    message: format!("cannot read token file {}: {e}", path.display()),
                })
            }
        },
        None => None,
    };
    let answer = status_cmd::request(
        admin,
        hyper::Method::POST,
        "/upgrade",
        token.as_deref(),
        timeout,
    )
    .await;
    match answer {
        Ok((200, body)) => {
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            Ok(format!(
                "upgraded: old pid {} drains its connections, new pid {} serves\n",
                doc["old_pid"], doc["new_pid"]
            ))
        }
        Ok((status, body)) => {
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let why = doc["error"].as_str().map_or_else(
                || String::from_utf8_lossy(&body).into_owned(),
                str::to_string,
            );
            // No token, a wrong path, or not a splicer: the command was used wrongly.
            let usage = matches!(status, 401 | 404 | 405);
            Err(Failure {
                code: if usage { EXIT_USAGE } else { EXIT_REFUSED },
                message: format!("upgrade refused ({status}): {why}"),
            })
        }
        Err(e) => Err(Failure {
            code: match e {
                StatusCmdError::BadUrl { .. } => EXIT_USAGE,
                _ => EXIT_REFUSED,
            },
            message: e.to_string(),
        }),
    }
}
