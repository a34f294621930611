//! Raw HTTP/1.1 requests to the admin API, for tests that look at status codes, headers and
//! error bodies exactly (the helpers in `mod.rs` return only status and body).

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// An admin answer: status, headers (lower-cased names) and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub code: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (the test fails when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// `{"error":"..."}` (one key, a non-empty message containing `phrase`) with status
    /// `code` and a JSON content type.
    pub fn assert_error(&self, code: u16, phrase: &str, what: &str) {
        assert_eq!(self.code, code, "{what}: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}: {self:?}"
        );
        let v = self.json();
        let message = v["error"].as_str().unwrap_or("");
        assert!(
            !message.is_empty()
                && message.contains(phrase)
                && v.as_object().map(|o| o.len()) == Some(1),
            "{what}: expected {{\"error\":\"...{phrase}...\"}}: {v}"
        );
    }
}

/// One request to `addr` with extra header lines and `body` (Content-Length always sent).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Answer {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect to admin");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        String::from_utf8(buf).expect("UTF-8 answer")
    };
    let text = tokio::time::timeout(WAIT, fut)
        .await
        .expect("admin request timed out");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        code,
        headers,
        body: body.to_string(),
    }
}
