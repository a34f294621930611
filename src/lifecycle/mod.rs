//! The balancer's own life: sockets passed in (by systemd or by the process this one replaces),
//! the service manager's notifications, binary upgrades, and the state that outlives the
//! process. `app` uses these; none of them touches a connection.

pub mod inherited;
pub mod notify;
pub mod state_file;
pub mod upgrade;

pub use inherited::Inherited;
pub use notify::Notifier;
pub use upgrade::{Executable, ReadyPipe, UpgradeError, Upgraded};
