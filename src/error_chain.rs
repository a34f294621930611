//! One line for an error and all its causes, for log lines and answers that outlive the error.

/// `error: cause: cause of the cause`, the way `anyhow` prints `{:#}`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
