//! Membership at run time (docs/architecture.md §10, for autoscaling hooks): backends added and removed
//! through the admin API. The pool supervisor applies them through the same paths as a
//! reload's new and removed members; here they are recorded in the state file (its `added` and
//! `removed` lists) and laid over the config file's members at start and at every reload:
//! the file's members, minus those removed through the API, plus those added through it. Where
//! the file lists an address that was added through the API, the file's entry wins (its
//! weight), and the API's entry is forgotten.

use std::net::SocketAddr;
use std::path::Path;

use super::{AppState, Persisted};
use crate::config::{BackendConfig, PoolConfig};
use crate::error_chain::error_chain;
use crate::lifecycle::state_file::{self, State};
use crate::pool::{AdminError, Member};

impl AppState {
    /// Adds `address` to `pool_name` at run time and records it before answering. It starts
    /// down and needs `rise` passes. A backend of the file removed through the API comes back
    /// with the file's weight (the file's entry wins); any other joins with `weight`.
    pub async fn add_backend(
        &self,
        pool_name: &str,
        address: SocketAddr,
        weight: u32,
    ) -> Result<Member, AdminError> {
        let Some(pool) = self.pool(pool_name) else {
            return Err(AdminError::UnknownPool(pool_name.to_string()));
        };
        // Held across the change so the file's order is the order changes applied in.
        let mut persisted = self.persisted.lock().await;
        let file_weight = file_backend(&persisted, pool_name, address).map(|b| b.weight);
        let weight = file_weight.unwrap_or(weight);
        let backend = pool.add_backend(address, weight).await?;
        if persisted
            .state
            .record_added(pool_name, address, weight, file_weight.is_some())
        {
            self.write_state_file(&persisted).await;
        }
        Ok(backend)
    }

    /// Removes `address` from `pool_name` at run time and records it before answering: it
    /// drains and leaves after its last connection or `drain_timeout`, and stays out across
    /// reloads and restarts until it is added back through the API.
    pub async fn remove_backend(
        &self,
        pool_name: &str,
        address: SocketAddr,
    ) -> Result<(), AdminError> {
        let Some(pool) = self.pool(pool_name) else {
            return Err(AdminError::UnknownPool(pool_name.to_string()));
        };
        let mut persisted = self.persisted.lock().await;
        pool.remove_backend(address).await?;
        let in_file = file_backend(&persisted, pool_name, address).is_some();
        if persisted.state.record_removed(pool_name, address, in_file) {
            self.write_state_file(&persisted).await;
        }
        Ok(())
    }
}

/// The file's own entry for `pool/address`, if its file lists it.
fn file_backend(persisted: &Persisted, pool: &str, address: SocketAddr) -> Option<BackendConfig> {
    persisted
        .file_pools
        .iter()
        .find(|p| p.name == pool)?
        .backends
        .iter()
        .find(|b| b.address == address)
        .cloned()
}

/// `pool` as the supervisor should run it: the file's members minus those removed through the
/// admin API, then those added through it that the file does not list (in the order they were
/// added). A pool fed by DNS is left alone: its members are DNS's.
pub(super) fn effective_pool(pool: &PoolConfig, state: &State) -> PoolConfig {
    let mut effective = pool.clone();
    if pool.discover.is_some() {
        return effective;
    }
    let removed = |a: SocketAddr| {
        state
            .removed
            .iter()
            .any(|r| r.pool == pool.name && r.address == a)
    };
    let in_file = |a: SocketAddr| pool.backends.iter().any(|b| b.address == a);
    effective.backends.retain(|b| !removed(b.address));
    effective.backends.extend(
        state
            .added
            .iter()
            .filter(|a| a.pool == pool.name && !in_file(a.address))
            .map(|a| BackendConfig {
                address: a.address,
                weight: a.weight,
            }),
    );
    effective
}

/// Brings a new config file's pools into the recorded membership (at a reload, `persisted`
/// held): members added through the API that the file now lists are forgotten (the file's
/// entry wins), and file members that stay out because they were removed through the API are
/// logged, since the file alone no longer tells what runs. Returns whether the state changed.
pub(super) fn adopt_file(persisted: &mut Persisted, pools: &[PoolConfig]) -> bool {
    let mut changed = false;
    for pool in pools.iter().filter(|p| p.discover.is_none()) {
        let listed: Vec<SocketAddr> = pool.backends.iter().map(|b| b.address).collect();
        for address in persisted.state.forget_added_in_file(&pool.name, &listed) {
            changed = true;
            tracing::info!(pool = %pool.name, backend = %address,
                "the config file now lists a backend added through the admin API: the file's entry applies");
        }
        for r in persisted
            .state
            .removed
            .iter()
            .filter(|r| r.pool == pool.name && listed.contains(&r.address))
        {
            tracing::info!(pool = %pool.name, backend = %r.address,
                "backend of the config file stays out: it was removed through the admin API (POST /pools/<pool>/backends adds it back)");
        }
    }
    persisted.file_pools = pools.to_vec();
    changed
}

/// Reads the state file at start: its contents, and how many errors to count (0 or 1). An
/// unreadable or invalid file is logged with its path and the reason and ignored: splicer
/// starts from the config's state, never fails for it.
pub(super) async fn read_state_file(path: Option<&Path>) -> (State, u64) {
    let Some(path) = path.map(Path::to_path_buf) else {
        return (State::default(), 0);
    };
    let read_path = path.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let stale = state_file::remove_stale_temps(&read_path);
        if stale > 0 {
            tracing::info!(path = %read_path.display(), stale, "removed temp files of state-file writes cut short");
        }
        state_file::load(&read_path)
    })
    .await;
    match loaded {
        Ok(Ok(state)) => {
            for a in &state.added {
                tracing::info!(pool = %a.pool, backend = %a.address, weight = a.weight,
                    path = %path.display(), "restored a backend added through the admin API");
            }
            for r in &state.removed {
                tracing::info!(pool = %r.pool, backend = %r.address, path = %path.display(),
                    "restored a removal through the admin API: the backend stays out");
            }
            (state, 0)
        }
        Ok(Err(e)) => {
            tracing::error!(path = %path.display(), error = %error_chain(&e),
                "state file ignored: starting from the config's state");
            (State::default(), 1)
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "state file reader failed; ignored");
            (State::default(), 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(text: &str) -> PoolConfig {
        let full = format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"q\"\n\
             [[pool]]\nname = \"q\"\n{text}\n"
        );
        let config = crate::config::parse(Path::new("t.toml"), &full).expect("valid test config");
        config.pools[0].clone()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn members(p: &PoolConfig) -> Vec<(String, u32)> {
        p.backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight))
            .collect()
    }

    #[test]
    fn file_minus_removed_plus_added_and_the_file_wins() {
        let file =
            pool(r#"backends = ["10.0.0.11:443", { address = "10.0.0.12:443", weight = 3 }]"#);
        let mut state = State::default();
        assert_eq!(
            members(&effective_pool(&file, &state)),
            [("10.0.0.11:443".into(), 1), ("10.0.0.12:443".into(), 3)]
        );
        state.record_removed("q", addr("10.0.0.11:443"), true);
        state.record_added("q", addr("10.0.0.14:443"), 2, false);
        state.record_added("other", addr("10.0.0.15:443"), 1, false);
        assert_eq!(
            members(&effective_pool(&file, &state)),
            [("10.0.0.12:443".into(), 3), ("10.0.0.14:443".into(), 2)]
        );
        // A file that now lists the added address: its entry and weight.
        let grown = pool(r#"backends = ["10.0.0.11:443", "10.0.0.12:443", "10.0.0.14:443"]"#);
        assert_eq!(
            members(&effective_pool(&grown, &state)),
            [("10.0.0.12:443".into(), 1), ("10.0.0.14:443".into(), 1)]
        );
        let mut persisted = Persisted {
            path: None,
            state: state.clone(),
            file_pools: vec![file.clone()],
        };
        assert!(adopt_file(&mut persisted, std::slice::from_ref(&grown)));
        assert_eq!(
            persisted.state.added.len(),
            1,
            "the other pool's entry stays"
        );
        assert_eq!(
            persisted.state.removed.len(),
            1,
            "still removed until added back"
        );
        assert!(!adopt_file(&mut persisted, std::slice::from_ref(&grown)));
        // A pool fed by DNS keeps DNS's members whatever the lists say.
        let dns = pool(r#"discover = { dns = "q.internal", port = 443 }"#);
        assert!(effective_pool(&dns, &state).backends.is_empty());
    }
}
