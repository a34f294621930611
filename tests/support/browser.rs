//! Headless Chromium driven over the DevTools protocol, for tests/dashboard.rs: a process
//! group killed on drop, one page session, JS evaluation, real mouse clicks and typing, the
//! page's console errors and requests, screenshots. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Chromium's start, up to its "DevTools listening" line; generous, the machine is shared.
const LAUNCH: Duration = Duration::from_secs(30);
/// One DevTools command's answer.
const CALL: Duration = Duration::from_secs(20);
/// Page loads and other waits with no figure of their own.
pub const WAIT: Duration = Duration::from_secs(20);

/// The browser binary: `$CHROMIUM`, else Debian's `/usr/bin/chromium`, else `chromium` on PATH.
fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/bin/chromium");
    if debian.exists() {
        return debian.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("chromium"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "headless Chromium is needed by this test and was not found: install the Debian \
                 package `chromium` (scripts/test does), or set CHROMIUM to its path"
            )
        })
}

/// Headless Chromium in a process group of its own, killed (group and all) when dropped, on
/// every exit path of a test, panics included.
pub struct Chromium {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium and returns it with the browser's DevTools WebSocket URL.
    pub fn launch() -> (Chromium, String) {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut command = Command::new(chromium_path());
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1200,900",
                // Anything not on loopback goes to a proxy that is not there, so nothing this
                // browser does can leave the machine (loopback bypasses proxies).
                "--proxy-server=127.0.0.1:9",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium_path().display()));
        let stderr = child.stderr.take().expect("chromium stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let browser = Chromium {
            child,
            stderr: log.clone(),
            _profile: profile,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stderr to its end, so Chromium never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                if let Ok(mut l) = log.lock() {
                    if l.len() < 500 {
                        l.push(line);
                    }
                }
            }
        });
        let url = rx.recv_timeout(LAUNCH).unwrap_or_else(|_| {
            panic!(
                "Chromium printed no DevTools URL within {LAUNCH:?}; stderr:\n{}",
                browser.log()
            )
        });
        (browser, url)
    }

    fn log(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the group is the one this
            // child leads (process_group(0)), and the child is not reaped yet, so its id
            // names no other group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// What the page reported that a person would see in the console: console errors, uncaught
/// exceptions and error log entries (failed loads, CSP violations), and every request it made.
#[derive(Default, Debug)]
pub struct Seen {
    /// One line per error, `log ("network"): ...` for failed loads.
    pub errors: Vec<String>,
    /// Every URL the page requested.
    pub requests: Vec<String>,
}

/// A DevTools session on one page (flattened target session over the browser's socket).
pub struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    seen: Seen,
}

impl Page {
    /// Connects to the browser, opens a tab and enables the domains the tests read.
    pub async fn open(browser_url: &str) -> Page {
        let (ws, _) = tokio::time::timeout(CALL, tokio_tungstenite::connect_async(browser_url))
            .await
            .expect("DevTools connection timed out")
            .expect("DevTools connection");
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 0,
            seen: Seen::default(),
        };
        let target = page
            .send(false, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = page
            .send(
                false,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        page.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        for domain in ["Runtime", "Log", "Page", "Network"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page.resize(1200, 820).await;
        page
    }

    /// Sets the viewport to `width` × `height` CSS pixels.
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    }

    /// A command to the page's session.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(true, method, params).await
    }

    /// Sends one command and reads until its answer, recording the events that come first.
    async fn send(&mut self, in_session: bool, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if in_session {
            message["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap_or_else(|e| panic!("send {method}: {e}"));
        let deadline = tokio::time::Instant::now() + CALL;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {CALL:?}"));
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("DevTools connection failed during {method}: {e}"),
                None => panic!("DevTools connection closed during {method}"),
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if v["id"] == json!(id) {
                if let Some(error) = v.get("error") {
                    panic!("{method} failed: {error}");
                }
                return v["result"].clone();
            }
            self.observe(&v);
        }
    }

    fn observe(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled")
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x["value"].to_string()).collect())
                    .unwrap_or_default();
                self.seen
                    .errors
                    .push(format!("console.{}: {}", p["type"], args.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                self.seen.errors.push(format!(
                    "exception: {} {}",
                    d["text"], d["exception"]["description"]
                ));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                let e = &p["entry"];
                self.seen
                    .errors
                    .push(format!("log ({}): {} {}", e["source"], e["text"], e["url"]));
            }
            Some("Network.requestWillBeSent") => {
                if let Some(url) = p["request"]["url"].as_str() {
                    self.seen.requests.push(url.to_string());
                }
            }
            _ => {}
        }
    }

    /// The value of a JS expression in the page (promises awaited); panics on an exception.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it yields something other than null/false/undefined, which is
    /// returned; panics with `what` and the page's text after `limit`.
    pub async fn wait_for(&mut self, limit: Duration, what: &str, expression: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expression).await;
            if !(v.is_null() || v == json!(false)) {
                return v;
            }
            if start.elapsed() >= limit {
                let text = self.eval("document.body.innerText").await;
                let shot = self.screenshot("dashboard-failure.png").await;
                panic!(
                    "timed out after {limit:?} waiting for: {what} (screenshot: {})\npage text:\n{}",
                    shot.display(),
                    text.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
        self.wait_for(
            WAIT,
            "the page to load",
            "document.readyState === 'complete'",
        )
        .await;
    }

    /// A real mouse click (moved, pressed, released) in the middle of the element that the JS
    /// expression `element` yields, after checking it is visible, enabled and not covered.
    pub async fn click(&mut self, element: &str) {
        let point = self
            .eval(&format!(
                "(() => {{ const e = {element}; if (!e) return 'no such element';
                   if (e.disabled) return 'disabled';
                   e.scrollIntoView({{block: 'center'}});
                   const r = e.getBoundingClientRect();
                   const x = r.left + r.width / 2, y = r.top + r.height / 2;
                   const hit = document.elementFromPoint(x, y);
                   if (!hit || !(hit === e || e.contains(hit))) return 'covered';
                   return {{x, y}}; }})()"
            ))
            .await;
        assert!(point.is_object(), "cannot click {element}: {point}");
        let (x, y) = (point["x"].clone(), point["y"].clone());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Types `text` into the focused element.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Collects the events so far (one round trip: they arrive before its answer).
    pub async fn flush(&mut self) -> &Seen {
        self.eval("0").await;
        &self.seen
    }

    /// Writes a PNG of the page, down to the end of its content, to `target/{name}` and
    /// returns its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let size = self
            .eval(
                "[document.documentElement.clientWidth,
                  Math.ceil(document.body.getBoundingClientRect().bottom + window.scrollY) + 16]",
            )
            .await;
        let (width, height) = (
            size[0].as_f64().unwrap_or(800.0),
            size[1].as_f64().unwrap_or(600.0),
        );
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        // CARGO_TARGET_TMPDIR is `<target>/tmp`.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory")
            .to_path_buf();
        let path = target.join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}
