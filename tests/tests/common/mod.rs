//! Helpers shared by the fleet tests.
#![allow(dead_code)]

use polyshell_shell::{Shell, SshOptions};
use polyshell_tests::Fleet;
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
