//! splicer: a layer-4 (TCP) load balancer that splices client streams to backends without
//! terminating TLS, while health checks hot-swap the set of live backends.
//!
//! # Architecture
//!
//! Data flows one way: config → runtime → connections.
//!
//! ```text
//! config file ─► config::load (serde mirror → validated Config)
//!                 └─► server::start (app::Starting, then admin::serve over it)
//!                      ├─ pool::start per pool ─ supervisor task: events → pool::machine (pure
//!                      │     │   `apply(event, now) -> effects`) → effects performed
//!                      │     ▲ health::run_checks per backend (probe::Prober: TCP / TLS / HTTP),
//!                      │     ▲ health::cluster, discovery, admin / reload commands
//!                      │     └─► ArcSwap<PoolSnapshot>: live set + states + fail-open + outage
//!                      │           + cluster health, one store per change by the one writer
//!                      ├─ net::listener::accept_loop per listener (max_connections backpressure)
//!                      │     └─► proxy::serve per connection: pick (pool::balance) → net::connect
//!                      │           (retries) → net::pump (both ways) → access log
//!                      └─ admin::serve (hyper): /health, /ready, /status, the dashboard at /
//! ```
//!
//! Who owns what: `server` wires `app` and `admin` (the admin API reads the app, never the
//! reverse; `layering.rs` keeps the module graph acyclic); `app` owns the tokens and task
//! trackers (and so shutdown); each pool's supervisor owns its pool's state and alone publishes
//! its [`pool::PoolSnapshot`], which the data path, `/status` and `/metrics` all read;
//! connections own nothing shared but an RAII [`pool::Lease`] and counters; the admin API only
//! reads. The whole design, and the interface contract, is docs/architecture.md.
//!
//! [`rig`] is the simulated cluster used by `splicer rig`, `splicer demo` and the tests.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod backend_cmd;
pub mod cli_docs;
pub mod config;
pub mod console;
pub mod demo;
pub mod discovery;
pub mod edge;
pub mod error_chain;
pub mod health;
pub mod histogram;
pub mod lifecycle;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod proxy;
pub mod rig;
pub mod server;
pub mod status_cmd;
pub mod status_doc;
pub mod upgrade_cmd;

#[cfg(test)]
mod layering;
