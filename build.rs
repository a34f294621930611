//! Records the git commit splicer is built from, for `splicer_build_info{commit}`.
//!
//! `SPLICER_COMMIT` in the environment wins (the Docker build context has no .git: the
//! Dockerfile takes it as a build argument). Otherwise outside a git checkout (a source
//! tarball) or without git, the commit is `unknown`: this script never fails the build. It
//! reruns only when HEAD moves (a checkout, or a commit on the current branch) or
//! `SPLICER_COMMIT` changes, not on every source change.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SPLICER_COMMIT");
    let given = std::env::var("SPLICER_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        // Only what a commit id or a tag can hold: the value ends up in a metric label.
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '+'))
        });
    let commit = given
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SPLICER_GIT_COMMIT={commit}");

    // A path that does not exist would make cargo rerun this on every build, so only existing
    // ones are named; with none, this file alone triggers a rerun.
    println!("cargo:rerun-if-changed=build.rs");
    let mut watched = Vec::new();
    // HEAD itself changes on a checkout; the branch's ref file changes on a commit. `--git-path`
    // resolves both in a linked worktree too, whose `.git` is a file pointing elsewhere.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        watched.push(PathBuf::from(head));
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
            watched.push(PathBuf::from(path));
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The trimmed stdout of `git args` run in the package's directory, when git exists, the
/// directory is in a checkout, and the command succeeds with some output.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    // Only this package's own checkout: a tarball unpacked inside some other repository must
    // not report that repository's commit.
    if !PathBuf::from(&dir).join(".git").exists() {
        return None;
    }
    let out = Command::new("git")
        .args(args)
        .current_dir(&dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}
