//! Sockets: binding listeners, the accept loop, connecting to backends, moving bytes.

pub mod client_hello;
pub mod connect;
pub mod listener;
pub mod proxy_protocol;
pub mod pump;
#[cfg(target_os = "linux")]
pub mod splice;
