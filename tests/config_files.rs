//! Every example under `config/` must load: they are what users copy.

use std::path::Path;

/// The token file an example's `token_file = "admin.token"` names: the operator creates it
/// beside the config (config/behind-nlb.toml says how), so the repository ships none.
const TOKEN_FILE: (&str, &str) = ("admin.token", "0123456789abcdef0123456789abcdef\n");

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    // Each file is loaded from a directory that also holds what the operator adds beside it.
    let beside = tempfile::tempdir().unwrap();
    std::fs::write(beside.path().join(TOKEN_FILE.0), TOKEN_FILE.1).unwrap();
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let copy = beside.path().join(path.file_name().unwrap());
            std::fs::copy(&path, &copy).unwrap();
            let config = splicer::config::load(&copy)
                .unwrap_or_else(|e| panic!("{} does not load:\n{e}", path.display()));
            assert!(!config.listeners.is_empty(), "{}", path.display());
            assert!(!config.summary().is_empty());
            loaded += 1;
        }
    }
    assert!(
        loaded >= 3,
        "expected at least 3 example configs, found {loaded}"
    );
}

#[test]
fn rig_config_matches_the_rig() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rig.toml");
    let config = splicer::config::load(&path).unwrap();
    assert_eq!(config.listeners[0].bind.to_string(), "127.0.0.1:8443");
    let pool = config.pool(&config.listeners[0].pool).unwrap();
    let backends: Vec<String> = pool
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(
        backends,
        ["127.0.0.2:8443", "127.0.0.3:8443", "127.0.0.4:8443"]
    );
    assert_eq!(pool.health.interval.as_millis(), 1000);
    assert_eq!(pool.health.timeout.as_millis(), 500);
    assert_eq!(config.admin.unwrap().bind.to_string(), "127.0.0.1:9090");
}

/// config/quay-ha.toml is the guide's (docs/quay-ha.md) config without a CA file or token.
#[test]
fn quay_ha_config_matches_the_guide() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/quay-ha.toml");
    let config = splicer::config::load(&path).unwrap();
    let pool = &config.pools[0];
    assert!(pool.backends.iter().all(|b| b.address.port() == 8443));
    assert_eq!(pool.slow_start.map(|d| d.as_secs()), Some(30));
    assert!(pool.health.tls_verify);
    assert_eq!(pool.health.host.as_deref(), Some("quay.example.com"));
}
