//! Sites behind a bastion with OpenSSH's stock limits (`MaxStartups 10:30:100`,
//! `MaxSessions 10`): the sites behind it share its connections (one, and a few more only
//! where channel opens queue on it, never more than 8 handshakes to it at once), so a run of
//! hundreds of sites neither trips the bastion's limits nor logs in to it per site.

mod common;

use common::{bounded, ssh};
use polyshell_tests::Fleet;
use std::time::Duration;

/// One test at a time: each counts the bastion's logins and forwarded channels.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bastion_log(fleet: &Fleet) -> String {
    std::fs::read_to_string(fleet.log_of(&fleet.stock_bastion)).unwrap_or_default()
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

async fn through_the_stock_bastion(n: usize) {
    let fleet = Fleet::load();
    assert!(
        fleet.sites.len() >= n,
        "this test needs a fleet of at least {n} sites (it has {}); `cargo xtask test` \
         brings up 500",
        fleet.sites.len()
    );
    let _serial = SERIAL.lock().await;
    let before = bastion_log(&fleet);
    let shells: Vec<_> = fleet.sites[..n]
        .iter()
        .map(|site| ssh(&fleet, &fleet.via_stock_bastion(site)).named(&site.name))
        .collect();
    let results = bounded(
        "a run through the stock bastion",
        180,
        futures::future::join_all(shells.iter().map(|s| s.run("echo $((6 * 7))"))),
    )
    .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Ok(out) if out.stdout_text() == "42\n" => None,
            Ok(out) => Some(format!("{:?} {:?}", out.status, out.stdout_text())),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {n} sites failed through the stock bastion, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    // sshd writes its log lines a moment after the client sees the answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = bastion_log(&fleet);
    let new = &after[before.len().min(after.len())..];
    let logins = count(new, "Accepted publickey for ");
    let forwarded = count(new, "server_request_direct_tcpip");
    // At most the pool's 32 (a bastion connection still open from an earlier test in this
    // process is reused, as it would be by a later schedule of the same run).
    assert!(logins <= 32, "{logins} logins to the bastion for {n} sites");
    let throttled: Vec<&str> = new.lines().filter(|l| l.contains("MaxStartups")).collect();
    assert!(
        throttled.is_empty(),
        "the bastion throttled or dropped connections: {throttled:?}"
    );
    assert_eq!(
        forwarded, n,
        "channels forwarded by the bastion for {n} sites"
    );
    drop(shells);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn stock_limits_bastion_serves_200_sites_within_its_limits() {
    through_the_stock_bastion(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn stock_limits_bastion_serves_500_sites_within_its_limits() {
    through_the_stock_bastion(500).await;
}
