//! Sockets: binding listeners, the accept loop, connecting to backends, moving bytes.

pub mod client_hello;
pub mod connect;
pub mod end;
pub mod listener;
pub mod proxy_protocol;
pub mod pump;
#[cfg(target_os = "linux")]
pub mod splice;

/// Whether an I/O error means this process or machine is out of a resource (file descriptors,
/// socket buffers, memory) rather than that the peer did anything: it calls for a pause, and
/// it is never a backend's fault.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
