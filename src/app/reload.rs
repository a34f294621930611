//! Reload: re-read the config file off the serving threads, refuse what would weaken the running
//! admin API, then apply the new config as a diff (everything that can fail first, so a failure
//! leaves the running config as it was).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{membership, route_pools, AppState, Control, ReloadReport};
use crate::access_log::AccessLog;
use crate::config::{self, diff, Config};
use crate::error_chain::error_chain;
use crate::net::listener;
use crate::pool::{self, Pool, PreparedProber};
use crate::proxy::{ListenerCounters, ListenerCtx};

impl AppState {
    /// Re-reads the config file and applies it as a diff. An invalid file (or a new listener
    /// that cannot bind, or one that would leave a network-facing admin API without a token)
    /// changes nothing and returns every problem, one line each. Reading and validating run on
    /// the blocking pool: a huge file, or a `ca_file` on a hung mount, stalls only the reload.
    pub async fn reload(&self) -> Result<ReloadReport, Vec<String>> {
        let mut control = self.control.lock().await;
        self.notifier.reloading();
        let path = control.config.source.clone();
        let read_path = path.clone();
        let old = control.config.clone();
        // The diff too: with tens of thousands of backends it is not free either.
        let loaded = tokio::task::spawn_blocking(move || {
            config::load(&read_path).map(|new| {
                let d = diff::diff(&old, &new);
                let probers = prepare_probers(&old, &new);
                (new, d, probers)
            })
        })
        .await;
        let result = match loaded {
            // During shutdown a reload could bind listeners that nothing would accept on.
            _ if self.is_shutting_down() => Err(vec![format!(
                "{}: not applied: shutting down",
                path.display()
            )]),
            Err(e) => Err(vec![format!(
                "{}: not applied: the config reader failed: {e}",
                path.display()
            )]),
            Ok(Err(e)) => Err(e.lines()),
            Ok(Ok((new, d, probers))) => match admin_guard(running_admin(&control), &new) {
                Err(line) => Err(vec![line]),
                Ok(()) => self.apply(&mut control, new, d, probers).await,
            },
        };
        match &result {
            Ok(r) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    path = %path.display(),
                    listeners_added = ?r.listeners_added,
                    listeners_removed = ?r.listeners_removed,
                    backends_added = ?r.backends_added,
                    backends_removed = ?r.backends_removed,
                    "config reloaded"
                );
            }
            Err(lines) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), errors = ?lines, "config reload failed: nothing changed");
            }
        }
        self.notifier.ready(&self.status_line());
        result
    }

    async fn apply(
        &self,
        control: &mut Control,
        new: Config,
        d: diff::ConfigDiff,
        mut probers: HashMap<String, PreparedProber>,
    ) -> Result<ReloadReport, Vec<String>> {
        for setting in &d.needs_restart {
            tracing::warn!(setting, "this setting changes only at the next start");
        }
        let drain_timeout = new.runtime.drain_timeout;
        let drain_timeout_changed = drain_timeout != control.config.runtime.drain_timeout;

        // Everything that can fail comes first, so a failure leaves the running config as it was.
        let mut fresh_sockets = Vec::new();
        for name in &d.listeners_added {
            let Some(lc) = new.listeners.iter().find(|l| &l.name == name) else {
                continue;
            };
            let bound = listener::bind(
                &format!("listener '{name}'"),
                lc.bind,
                lc.backlog,
                lc.reuse_port,
            )
            .map_err(|e| vec![format!("{}: {}", new.source.display(), error_chain(&e))])?;
            let socket = TcpListener::from_std(bound).map_err(|e| {
                vec![format!(
                    "{}: listener {name}: cannot register socket: {e}",
                    new.source.display()
                )]
            })?;
            fresh_sockets.push((name.clone(), Arc::new(socket)));
        }
        // Held from here to the end: membership changes through the admin API wait, so the
        // members recorded in the state file and those the pools run stay the same.
        let mut persisted = self.persisted.lock().await;
        let mut started = Vec::new();
        for name in &d.pools_added {
            let Some(pc) = new.pool(name) else { continue };
            let prober = probers
                .remove(name)
                .unwrap_or_else(|| PreparedProber::build(pc));
            match pool::start_prepared(
                membership::effective_pool(pc, &persisted.state),
                prober,
                drain_timeout,
                false,
                &self.background,
                self.stop_background.clone(),
            ) {
                Ok(s) => started.push(s.pool),
                Err(e) => {
                    for p in &started {
                        p.retire(Duration::ZERO).await;
                    }
                    return Err(vec![format!(
                        "{}: pool {name}: cannot set up health checks: {}",
                        new.source.display(),
                        error_chain(&e)
                    )]);
                }
            }
        }

        // Pools: reconfigure kept ones, retire removed ones.
        let old_pools = self.pools.load_full();
        let mut pools: Vec<Arc<Pool>> = Vec::with_capacity(new.pools.len());
        for pc in &new.pools {
            if let Some(p) = started.iter().find(|p| *p.name == *pc.name) {
                pools.push(p.clone());
            } else if let Some(p) = old_pools
                .iter()
                .find(|p| *p.name == *pc.name && !p.is_retired())
            {
                // A new drain_timeout alone changes no pool setting, but the supervisor uses
                // it for the next drain, so it must hear of it too.
                if d.pools_changed.contains(&pc.name) || drain_timeout_changed {
                    // Runtime members stay: the file changes only what it changed.
                    let effective = membership::effective_pool(pc, &persisted.state);
                    let prober = probers.remove(&pc.name);
                    p.reconfigure(effective, drain_timeout, prober).await;
                }
                pools.push(p.clone());
            }
        }
        for name in &d.pools_removed {
            if let Some(p) = old_pools
                .iter()
                .find(|p| *p.name == **name && !p.is_retired())
            {
                p.retire(drain_timeout).await;
            }
        }
        // Only what joined: not a file member that stays out for its removal through the admin
        // API, nor one the API had already added (before the file takes it over below).
        let runtime_member = |pb: &String| {
            let named = |pool: &str, address: SocketAddr| *pb == format!("{pool}/{address}");
            persisted
                .state
                .removed
                .iter()
                .any(|r| named(&r.pool, r.address))
                || persisted
                    .state
                    .added
                    .iter()
                    .any(|a| named(&a.pool, a.address))
        };
        let backends_added: Vec<String> = d
            .backends_added
            .iter()
            .filter(|pb| !runtime_member(pb))
            .cloned()
            .collect();
        if membership::adopt_file(&mut persisted, &new.pools) {
            self.write_state_file(&persisted).await;
        }
        drop(persisted);
        // Removed pools stay listed (as draining) until their last connection ends.
        pools.extend(
            old_pools
                .iter()
                .filter(|p| p.is_retired() && !p.is_finished())
                .cloned(),
        );

        // Listeners: stop removed and changed loops; start added and changed ones.
        let access_log_changed = new.runtime.access_log != control.config.runtime.access_log;
        let access_log = match self.access_log_for(&new) {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log; connections are not logged");
                AccessLog::disabled()
            }
        };
        let old_ctxs = self.listeners.load_full();
        for name in &d.listeners_removed {
            if let Some(pos) = control.loops.iter().position(|l| &l.name == name) {
                // Ended before the reload answers: the port refuses from then on.
                control.loops.remove(pos).end().await;
            }
        }
        let mut ctxs = Vec::with_capacity(new.listeners.len());
        let mut opening = Vec::new();
        for lc in &new.listeners {
            let Some(pool) = pools
                .iter()
                .find(|p| *p.name == *lc.pool && !p.is_retired())
                .cloned()
            else {
                continue;
            };
            let routes = route_pools(lc, &pools);
            let old_ctx = old_ctxs.iter().find(|c| c.config.name == lc.name);
            let fresh = fresh_sockets.iter().find(|(n, _)| n == &lc.name);
            let pools_moved = old_ctx.is_some_and(|c| {
                !Arc::ptr_eq(&c.pool, &pool)
                    || c.routes.len() != routes.len()
                    || c.routes
                        .iter()
                        .zip(&routes)
                        .any(|((_, a), (_, b))| !Arc::ptr_eq(a, b))
            });
            let restart = fresh.is_none()
                && (d.listeners_changed.contains(&lc.name) || access_log_changed || pools_moved);
            let socket = match fresh {
                Some((_, s)) => s.clone(),
                None => {
                    let Some(l) = control.loops.iter().find(|l| l.name == lc.name) else {
                        continue;
                    };
                    if !restart {
                        if let Some(c) = old_ctx {
                            ctxs.push(c.clone());
                        }
                        continue;
                    }
                    l.socket.clone()
                }
            };
            if restart {
                if let Some(pos) = control.loops.iter().position(|l| l.name == lc.name) {
                    control.loops.remove(pos).end().await;
                }
                let old_backlog = old_ctx.map(|c| c.config.backlog);
                if fresh.is_none() && old_backlog != Some(lc.backlog) {
                    let std_socket = socket2::SockRef::from(&*socket);
                    let backlog = i32::try_from(lc.backlog).unwrap_or(i32::MAX);
                    if let Err(e) = std_socket.listen(backlog) {
                        tracing::warn!(listener = %lc.name, error = %e, "cannot change the backlog");
                    }
                }
            }
            let counters = match (fresh, old_ctx) {
                (None, Some(c)) => c.counters().clone(),
                _ => Arc::new(ListenerCounters::default()),
            };
            let local = socket.local_addr().unwrap_or(lc.bind);
            let ctx = Arc::new(ListenerCtx::new(
                lc.clone(),
                local,
                pool,
                routes,
                access_log.clone(),
                counters,
                new.runtime.client_table_size,
            ));
            opening.push((ctx.clone(), socket));
            ctxs.push(ctx);
        }

        self.pools.store(Arc::new(pools));
        // Before the new loops accept: a client they serve finds its listener in `/status`.
        self.listeners.store(Arc::new(ctxs));
        for (ctx, socket) in opening {
            control.loops.push(self.spawn_accept_loop(ctx, socket));
        }
        self.admin_token
            .store(Arc::new(new.admin.as_ref().and_then(|a| a.token.clone())));
        self.drain_timeout.store(Arc::new(drain_timeout));
        let report = ReloadReport {
            listeners_added: d.listeners_added.clone(),
            listeners_removed: d.listeners_removed.clone(),
            backends_added,
            backends_removed: d.backends_removed.clone(),
            settings_changed: d.settings_changed.clone(),
        };
        control.config = new;
        Ok(report)
    }
}

/// The admin token applies at once but `admin.bind` only at the next start, so a reload is
/// judged against the socket that actually listens: while it is on a non-loopback address, the
/// new file must keep a token (validation alone checks the new file's bind, which may say
/// loopback while the running socket still faces the network).
fn admin_guard(running: Option<SocketAddr>, new: &Config) -> Result<(), String> {
    let Some(running) = running else {
        return Ok(());
    };
    let has_token = new.admin.as_ref().is_some_and(|a| a.token.is_some());
    if running.ip().is_loopback() || has_token {
        return Ok(());
    }
    Err(format!(
        "{}: not applied: the running admin API listens on {running}, which is not a loopback \
         address, and the new file sets no [admin] token_file; a changed admin bind applies only \
         at the next start, so this reload would leave it open without a token (keep token_file, \
         or restart to move the admin API)",
        new.source.display()
    ))
}

/// Where the admin API listens now (not what the file says).
fn running_admin(control: &Control) -> Option<SocketAddr> {
    control.admin.as_ref().and_then(|l| l.local_addr().ok())
}

/// Health-check clients for the pools whose check settings `new` adds or changes, built on
/// the reload's blocking thread because building one reads `ca_file` and the system roots.
fn prepare_probers(old: &Config, new: &Config) -> HashMap<String, PreparedProber> {
    new.pools
        .iter()
        .filter(|pc| {
            old.pool(&pc.name)
                .is_none_or(|oc| oc.health != pc.health || oc.send_proxy != pc.send_proxy)
        })
        .map(|pc| (pc.name.clone(), PreparedProber::build(pc)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, admin: &str) -> Config {
        let text = format!(
            "{admin}\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:1\"]\n"
        );
        config::parse(&dir.join("splicer.toml"), &text).expect("valid test config")
    }

    #[test]
    fn a_reload_cannot_strip_the_token_of_a_network_facing_admin_api() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let wild: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:9090".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        // The repro: the file now says loopback without a token, the socket is still 0.0.0.0.
        let stripped = config(dir.path(), "[admin]\nbind = \"127.0.0.1:9090\"");
        let no_admin = config(dir.path(), "");
        let kept = config(
            dir.path(),
            "[admin]\nbind = \"127.0.0.1:9090\"\ntoken_file = \"token\"",
        );
        for running in [wild, v6] {
            let e = admin_guard(Some(running), &stripped).unwrap_err();
            assert!(
                e.contains(&running.to_string()) && e.contains("token_file"),
                "{e}"
            );
            assert!(admin_guard(Some(running), &no_admin).is_err());
            assert!(admin_guard(Some(running), &kept).is_ok());
        }
        assert!(admin_guard(Some(local), &stripped).is_ok());
        assert!(admin_guard(Some(local), &no_admin).is_ok());
        assert!(admin_guard(None, &stripped).is_ok());
    }

    fn pools(dir: &std::path::Path, pools: &str) -> Config {
        let text =
            format!("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"a\"\n{pools}");
        config::parse(&dir.join("splicer.toml"), &text).expect("valid test config")
    }

    #[test]
    fn probers_are_built_ahead_for_new_pools_and_changed_checks_only() {
        let dir = tempfile::tempdir().unwrap();
        let pool = |name: &str, check: &str| {
            format!("[[pool]]\nname = \"{name}\"\nbackends = [\"127.0.0.1:1\"]\n[pool.health]\ncheck = \"{check}\"\n")
        };
        let old = pools(dir.path(), &(pool("a", "tcp") + &pool("b", "tcp")));
        let new = pools(
            dir.path(),
            &(pool("a", "tcp") + &pool("b", "https") + &pool("c", "none")),
        );
        let mut built: Vec<String> = prepare_probers(&old, &new).into_keys().collect();
        built.sort();
        assert_eq!(built, ["b", "c"]);
        assert!(prepare_probers(&new, &new).is_empty());
    }
}
