//! Sockets: binding listeners, the accept loop, connecting to backends, moving bytes.

pub mod connect;
pub mod listener;
pub mod pump;
