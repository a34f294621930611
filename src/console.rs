//! The CLI's writes to stdout and stderr. `println!` panics when its stream fails, so
//! `splicer check | true` (a closed pipe) or stdout on a full disk ended in exit code 101 and a
//! panic message; these never panic and let the caller choose the exit code.

use std::io::{ErrorKind, Write};

/// Writes `text` to stdout and flushes it. A reader that went away (EPIPE) is not an error: the
/// rest of the output was not wanted, and the command's own exit code still says how it went.
/// Any other failure (`ENOSPC`, `EIO`) is returned, for the caller to report and exit 1.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `text` and a newline to stderr; a failure is ignored, as there is nowhere left to
/// report it.
pub fn eprint_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.write_all(b"\n");
}
