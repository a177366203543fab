//! Keys and ssh_config as careful admins have them: encrypted keys (asked once per key for a
//! whole run), certificates, `@revoked` and `@cert-authority` known_hosts lines, tokens in
//! file options, and what an authentication failure says. The agent is kept out of every
//! test here with `IdentityAgent none` (the ssh-agent cases are in `agent.rs`).

mod common;

use common::{bounded, fingerprint, keygen, only_key};
use polyshell_auth::{NoPrompter, ScriptedPrompter};
use polyshell_shell::{ErrorKind, KeyPassphrases, Shell, ShellError, SshOptions};
use polyshell_tests::Fleet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn options(site: &str, config: &Path, passphrases: &Arc<KeyPassphrases>) -> SshOptions {
    let mut opts = SshOptions::new(site);
    opts.ssh_config = Some(config.to_owned());
    opts.connect_timeout = Some(std::time::Duration::from_secs(30));
    opts.passphrases = Some(passphrases.clone());
    opts
}

/// Runs `echo ok` on `sites` at once; each site's result.
async fn on_all(
    sites: &[String],
    config: &Path,
    passphrases: &Arc<KeyPassphrases>,
) -> Vec<Result<String, ShellError>> {
    let runs = sites.iter().map(|site| {
        let shell = Shell::with_ssh(options(site, config, passphrases));
        async move {
            shell
                .run("echo ok")
                .await
                .map(|out| out.stdout_text().to_owned())
        }
    });
    futures::future::join_all(runs).await
}

fn twenty(fleet: &Fleet) -> Vec<String> {
    assert!(fleet.sites.len() >= 20, "these tests need 20 sites");
    fleet.sites[..20].iter().map(|s| s.name.clone()).collect()
}

/// sshd logged a login with `key` on `site`.
fn accepted_with(fleet: &Fleet, site: &str, key: &Path) -> bool {
    let accepted = fingerprint(key);
    std::fs::read_to_string(fleet.log_of(fleet.site(site)))
        .unwrap()
        .lines()
        .any(|l| l.contains("Accepted publickey for") && l.ends_with(&accepted))
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn an_encrypted_key_is_asked_for_once_for_twenty_sites() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let sites = twenty(&fleet);
    for key in [&fleet.locked_identity, &fleet.locked_ecdsa_identity] {
        let config = fleet.ssh_config_with_key(dir.path(), key);
        let prompter = Arc::new(ScriptedPrompter::new([fleet.key_passphrase.as_str()]));
        let passphrases = KeyPassphrases::new(prompter.clone());
        let results = bounded("20 sites", 120, on_all(&sites, &config, &passphrases)).await;
        for (site, result) in sites.iter().zip(results) {
            assert_eq!(result.unwrap_or_else(|e| panic!("{e}")), "ok\n", "{site}");
        }
        assert_eq!(
            prompter.asked(),
            1,
            "{}: one prompt for 20 sites",
            key.display()
        );
        assert!(accepted_with(&fleet, &sites[7], key), "{}", key.display());
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn a_wrong_passphrase_is_asked_again_and_three_wrong_fail_every_site_at_once() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let sites = twenty(&fleet);
    let config = fleet.ssh_config_with_key(dir.path(), &fleet.locked_identity);

    let prompter = Arc::new(ScriptedPrompter::new([
        "not it",
        fleet.key_passphrase.as_str(),
    ]));
    let passphrases = KeyPassphrases::new(prompter.clone());
    let results = bounded("20 sites", 120, on_all(&sites, &config, &passphrases)).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        prompter.asked(),
        2,
        "one wrong answer, one right: two prompts"
    );

    let prompter = Arc::new(ScriptedPrompter::new(["no", "nope", "never", "spare"]));
    let passphrases = KeyPassphrases::new(prompter.clone());
    let results = bounded("20 sites", 120, on_all(&sites, &config, &passphrases)).await;
    for result in results {
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{}: key is encrypted and wrong passphrase 3 times",
                fleet.locked_identity.display()
            )),
            "{err}"
        );
    }
    assert_eq!(prompter.asked(), 3, "three tries, then every site fails");
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn with_no_way_to_ask_the_error_names_the_key_and_the_ways_out() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet.ssh_config_with_key(dir.path(), &fleet.locked_identity);
    // What the CLI builds with no terminal and no SSH_ASKPASS.
    let passphrases = KeyPassphrases::new(Arc::new(NoPrompter {
        hint: "there is no terminal to ask for its passphrase: add the key to ssh-agent \
               (ssh-add), or run from a terminal (or with SSH_ASKPASS set)"
            .into(),
    }));
    let sites = vec!["site003".to_owned()];
    let err = bounded("site003", 60, on_all(&sites, &config, &passphrases)).await[0]
        .as_ref()
        .unwrap_err()
        .to_string();
    let key = fleet.locked_identity.display().to_string();
    for part in [
        key.as_str(),
        "key is encrypted",
        "no terminal",
        "ssh-agent",
        "authentication as `polytest`",
    ] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    assert!(!err.contains(&fleet.key_passphrase));
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn a_key_the_server_does_not_take_costs_no_prompt_and_the_error_says_what_was_tried() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("stranger");
    keygen(&stranger, "its own passphrase");
    let plain = dir.path().join("plain-stranger");
    keygen(&plain, "");
    let missing = dir.path().join("no-such-key");
    let prompter = Arc::new(ScriptedPrompter::new(["its own passphrase"]));
    let passphrases = KeyPassphrases::new(prompter.clone());
    let mut opts = only_key(&fleet, "site005", &stranger);
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  IdentityAgent none\n  IdentityFile {}\n  IdentityFile {}\n",
            plain.display(),
            missing.display()
        ),
    )
    .unwrap();
    opts.ssh_config = Some(config);
    opts.passphrases = Some(passphrases);
    let err = bounded("site005", 60, Shell::with_ssh(opts).run("true"))
        .await
        .unwrap_err();
    assert_eq!(
        prompter.asked(),
        0,
        "asked for a key the server would refuse"
    );
    let ErrorKind::AuthFailed { tried, .. } = &err.kind else {
        panic!("expected an authentication error, got {err}");
    };
    assert_eq!(
        tried,
        &format!(
            "{}: not accepted by the server; {}: not accepted by the server; {}: no such file",
            stranger.display(),
            plain.display(),
            missing.display()
        )
    );
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn a_key_signed_by_the_trusted_user_ca_logs_in_with_its_certificate() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    // Neither key is in authorized_keys: only their certificates can log in.
    let plain = dir.path().join("certified");
    keygen(&plain, "");
    let locked = dir.path().join("certified-locked");
    keygen(&locked, "cert pass");
    for key in [&plain, &locked] {
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&fleet.user_ca)
            .args(["-I", "polyshell-test", "-n", &fleet.user, "-V", "-5m:+1h"])
            .arg(format!("{}.pub", key.display()))
            .status()
            .unwrap();
        assert!(status.success(), "ssh-keygen -s");
    }
    let prompter = Arc::new(ScriptedPrompter::new(["cert pass"]));
    let passphrases = KeyPassphrases::new(prompter.clone());
    for key in [&plain, &locked] {
        // KEY-cert.pub beside the key is found as OpenSSH finds it.
        let mut opts = only_key(&fleet, "site006", key);
        opts.passphrases = Some(passphrases.clone());
        let out = bounded("site006", 60, Shell::with_ssh(opts).run("echo cert"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        assert_eq!(out.stdout_text(), "cert\n");
    }
    assert_eq!(prompter.asked(), 1);
    // CertificateFile names a certificate kept elsewhere.
    let elsewhere = dir.path().join("elsewhere.pub");
    std::fs::rename(format!("{}-cert.pub", plain.display()), &elsewhere).unwrap();
    let mut opts = only_key(&fleet, "site006", &plain);
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  IdentityAgent none\n  CertificateFile {}\n",
            elsewhere.display()
        ),
    )
    .unwrap();
    opts.ssh_config = Some(config);
    let out = bounded(
        "site006",
        60,
        Shell::with_ssh(opts.clone()).run("echo cert"),
    )
    .await
    .unwrap_or_else(|e| panic!("CertificateFile: {e}"));
    assert_eq!(out.stdout_text(), "cert\n");
    // Without the certificate the same key is refused: the test can fail.
    std::fs::remove_file(&elsewhere).unwrap();
    let err = bounded("site006", 60, Shell::with_ssh(opts).run("true"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::AuthFailed { .. }), "{err}");
}

/// The fleet's known_hosts line(s) for `site`'s address, with the host pattern.
fn known_lines(fleet: &Fleet, addr: &str) -> Vec<String> {
    let label = format!("[{addr}]:2222");
    std::fs::read_to_string(&fleet.known_hosts)
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(label.as_str()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn a_revoked_host_key_is_refused_and_a_cert_authority_line_is_a_clear_error() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let site = fleet.site("site007");
    let lines = known_lines(&fleet, &site.addr);
    assert!(!lines.is_empty(), "no known_hosts line for {}", site.addr);
    let known = dir.path().join("known_hosts");
    let run = |known: PathBuf, policy| {
        let mut opts = only_key(&fleet, "site007", &fleet.identity);
        opts.known_hosts = Some(known);
        opts.host_key_policy = Some(policy);
        async move { Shell::with_ssh(opts).run("echo in").await }
    };
    use polyshell_shell::HostKeyPolicy::{AcceptNew, Strict};

    // The key listed as known and also @revoked (by a wildcard): refused, even with accept-new.
    let revoked: String = lines
        .iter()
        .map(|l| format!("@revoked * {}\n", l.split_once(' ').unwrap().1))
        .collect();
    std::fs::write(&known, format!("{}\n{revoked}", lines.join("\n"))).unwrap();
    for policy in [Strict, AcceptNew] {
        let err = bounded("site007", 60, run(known.clone(), policy))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::HostKeyRevoked { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("REVOKED"), "{err}");
    }
    // Without the @revoked line the same file lets it in: the check can fail.
    std::fs::write(&known, format!("{}\n", lines.join("\n"))).unwrap();
    let out = bounded("site007", 60, run(known.clone(), Strict))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "in\n");

    // Only an @cert-authority line names the host: a clear error, and nothing is recorded.
    let ca = std::fs::read_to_string(format!("{}.pub", fleet.user_ca.display())).unwrap();
    let text = format!("@cert-authority [127.77.*]:2222 {ca}");
    std::fs::write(&known, &text).unwrap();
    for policy in [Strict, AcceptNew] {
        let err = bounded("site007", 60, run(known.clone(), policy))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::HostCertificate { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("cannot check host certificates"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&known).unwrap(), text);
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn tokens_in_identity_file_and_known_hosts_file_resolve() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let site = fleet.site("site008");
    // Files named as the tokens will spell them: %r@%h and known_hosts-%p.
    let key = dir.path().join(format!("{}@{}", fleet.user, site.addr));
    std::fs::copy(&fleet.identity, &key).unwrap();
    std::fs::copy(&fleet.known_hosts, dir.path().join("known_hosts-2222")).unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host tokens\n  HostName {}\n  Port 2222\n  User {}\n  IdentityAgent none\n  \
             IdentityFile {}/%r@%h\n  UserKnownHostsFile {}/known_hosts-%p\n  \
             StrictHostKeyChecking yes\n  ServerAliveInterval 0\n",
            site.addr,
            fleet.user,
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut opts = SshOptions::new("tokens");
    opts.ssh_config = Some(config);
    let out = bounded("tokens", 60, Shell::with_ssh(opts).run("echo tokens"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout_text(), "tokens\n");
    assert!(accepted_with(&fleet, "site008", &key));
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn host_key_alias_names_the_key_in_known_hosts() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let site = fleet.site("site011");
    let host_key = std::fs::read_to_string(fleet.dir.join("host_ed25519.pub")).unwrap();
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, format!("web-vip {host_key}")).unwrap();
    let run = |alias: &str| {
        let config = dir.path().join(format!("config-{}", alias.len()));
        std::fs::write(
            &config,
            format!(
                "Host vip\n  HostName {}\n  Port 2222\n  User {}\n  IdentityAgent none\n  \
                 IdentityFile {}\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n{alias}",
                site.addr,
                fleet.user,
                fleet.identity.display(),
                known.display()
            ),
        )
        .unwrap();
        let mut opts = SshOptions::new("vip");
        opts.ssh_config = Some(config);
        async move { Shell::with_ssh(opts).run("echo vip").await }
    };
    let out = bounded("vip", 60, run("  HostKeyAlias web-vip\n"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout_text(), "vip\n");
    // Without the alias the key is looked up under [addr]:2222, which the file lacks.
    let err = bounded("vip", 60, run("")).await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::HostKeyUnknown { .. }),
        "{err}"
    );
}
