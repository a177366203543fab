//! Helpers shared by the fleet tests.
#![allow(dead_code)]

use polyshell_shell::{Shell, SshOptions};
use polyshell_tests::Fleet;
use std::path::Path;
use std::time::Duration;

/// An SSH shell to a fleet site, configured by the fleet's ssh_config (key, known_hosts,
/// strict host key checking, ProxyJump for `proxied`).
pub fn ssh(fleet: &Fleet, site: &str) -> Shell {
    Shell::with_ssh(options(fleet, site))
}

pub fn options(fleet: &Fleet, site: &str) -> SshOptions {
    let mut opts = SshOptions::new(site);
    opts.ssh_config = Some(fleet.ssh_config.clone());
    opts.connect_timeout = Some(Duration::from_secs(20));
    opts
}

/// Fails the test instead of hanging: every fleet test body runs under this bound.
pub async fn bounded<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {secs}s"),
    }
}

/// Polls `check` until it is true or `secs` pass; true if it became true.
pub async fn eventually(secs: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Options for `site` that offer `key` and nothing else (no ssh_config, so no fleet key).
pub fn only_key(fleet: &Fleet, site: &str, key: &Path) -> polyshell_shell::SshOptions {
    let site = fleet.site(site);
    let mut opts = polyshell_shell::SshOptions::new(&site.addr);
    opts.port = Some(site.port);
    opts.user = Some(fleet.user.clone());
    opts.identity = Some(key.to_owned());
    opts.known_hosts = Some(fleet.known_hosts.clone());
    opts.host_key_policy = Some(polyshell_shell::HostKeyPolicy::Strict);
    opts.connect_timeout = Some(Duration::from_secs(20));
    // An empty ssh_config: the operator's own (with its IdentityFile) must not join in.
    let empty = fleet.dir.join("empty_ssh_config");
    if !empty.exists() {
        std::fs::write(&empty, "").unwrap();
    }
    opts.ssh_config = Some(empty);
    opts
}

pub fn keygen(path: &Path, passphrase: &str) {
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The key's `SHA256:...` fingerprint, as sshd logs it.
pub fn fingerprint(key: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_owned()
}

/// This test process's connection keeper (the tests' own `test-keeper` program, in a
/// directory of this process's own): started at the first use, shared by every kept shell.
/// It keeps connections 60 s, and exits once its last client (this process) is gone and
/// they closed.
pub fn keeper() -> std::sync::Arc<polyshell_shell::keeper::Keeper> {
    use polyshell_shell::keeper::Keeper;
    use std::sync::{Arc, OnceLock};
    static KEEPER: OnceLock<Arc<Keeper>> = OnceLock::new();
    KEEPER
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("polyshell-test-keeper-{}", std::process::id()));
            let program = Path::new(env!("CARGO_BIN_EXE_test-keeper"));
            // On a thread and a runtime of its own (callers are inside a runtime); the
            // keeper's line lives on the shell crate's runtime, so it outlasts both.
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(Keeper::connect_with(&dir, program, Duration::from_secs(60)))
                    .unwrap_or_else(|e| panic!("cannot start the test keeper: {e}"))
            })
            .join()
            .expect("the keeper start")
        })
        .clone()
}
