//! Authentication through a real `ssh-agent`. Its own test binary: `SSH_AUTH_SOCK` is
//! process-wide, and no other test may see this agent.

mod common;

use common::{fingerprint, keygen, only_key};
use polyshell_shell::{ErrorKind, Output, Shell, ShellError, SshOptions};
use polyshell_tests::Fleet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An `ssh-agent -D` on a socket of ours, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(socket: &Path) -> Agent {
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent (OpenSSH's client tools) must be installed");
    let agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "ssh-agent made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// Runs `command` on the shell `opts` make, failing the test past 30 s.
fn run_bounded(
    runtime: &tokio::runtime::Runtime,
    opts: SshOptions,
    command: &str,
) -> Result<Output, ShellError> {
    runtime
        .block_on(async {
            let shell = Shell::with_ssh(opts);
            tokio::time::timeout(Duration::from_secs(30), shell.run(command)).await
        })
        .unwrap_or_else(|_| panic!("`{command}` did not finish in 30 s"))
}

/// Options for `site` from an ssh_config (written to `config`) that says `IdentitiesOnly yes`
/// and names `identity` as the only IdentityFile.
fn identities_only(fleet: &Fleet, site: &str, config: &Path, identity: &Path) -> SshOptions {
    std::fs::write(
        config,
        format!(
            "Host *\n  IdentitiesOnly yes\n  IdentityFile {}\n",
            identity.display()
        ),
    )
    .unwrap();
    let mut opts = only_key(fleet, site, identity);
    opts.identity = None;
    opts.ssh_config = Some(config.to_owned());
    opts
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn an_agent_key_authenticates_unless_identities_only() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _agent = start_agent(&socket);
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(&fleet.ecdsa_identity)
        .env("SSH_AUTH_SOCK", &socket)
        .status()
        .unwrap();
    assert!(added.success(), "ssh-add failed");
    // The only test in this binary, before any thread of its own starts.
    std::env::set_var("SSH_AUTH_SOCK", &socket);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // No key file exists: only the agent's key can log in.
    let missing = dir.path().join("no-such-key");
    let out = run_bounded(
        &runtime,
        only_key(&fleet, "site004", &missing),
        "echo via agent",
    )
    .unwrap_or_else(|e| panic!("agent login: {e}"));
    assert_eq!(out.stdout_text(), "via agent\n");
    let accepted = format!("ssh2: ECDSA {}", fingerprint(&fleet.ecdsa_identity));
    let log = std::fs::read_to_string(fleet.log_of(fleet.site("site004"))).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("Accepted publickey for") && l.ends_with(&accepted)),
        "sshd did not log `{accepted}`"
    );

    // IdentitiesOnly: the agent is not asked; only the (unauthorised) key file is tried.
    let stranger = dir.path().join("stranger");
    keygen(&stranger, "");
    let config = dir.path().join("ssh_config");
    let opts = identities_only(&fleet, "site004", &config, &stranger);
    let err = run_bounded(&runtime, opts, "true").unwrap_err();
    match &err.kind {
        ErrorKind::AuthFailed { tried, .. } => assert_eq!(
            tried,
            &format!("{}: not accepted by the server", stranger.display()),
            "{err}"
        ),
        other => panic!("expected an authentication error, got {other}"),
    }

    // An encrypted key loaded in the agent, and `IdentitiesOnly yes` + `IdentityFile` naming
    // it (the usual careful setup): OpenSSH signs through the agent, and so does polyshell,
    // asking nobody for the passphrase.
    let askpass = dir.path().join("askpass");
    std::fs::write(
        &askpass,
        format!("#!/bin/sh\necho '{}'\n", fleet.key_passphrase),
    )
    .unwrap();
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(&fleet.locked_identity)
        .env("SSH_AUTH_SOCK", &socket)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(added.success(), "ssh-add of the encrypted key failed");
    // The sshd log serves 16 sites: only what this login adds to it counts.
    let log_path = fleet.log_of(fleet.site("site009")).to_owned();
    let before = std::fs::read(&log_path).unwrap().len();
    let prompter = std::sync::Arc::new(polyshell_auth::ScriptedPrompter::new(Vec::<String>::new()));
    let mut opts = identities_only(&fleet, "site009", &config, &fleet.locked_identity);
    opts.passphrases = Some(polyshell_shell::KeyPassphrases::new(prompter.clone()));
    let out = run_bounded(&runtime, opts, "echo locked via agent")
        .unwrap_or_else(|e| panic!("encrypted key through the agent: {e}"));
    assert_eq!(out.stdout_text(), "locked via agent\n");
    assert_eq!(
        prompter.asked(),
        0,
        "the agent holds the key: no passphrase prompt"
    );
    let accepted = fingerprint(&fleet.locked_identity);
    let log = String::from_utf8_lossy(&std::fs::read(&log_path).unwrap()[before..]).into_owned();
    assert!(
        log.lines()
            .any(|l| l.contains("Accepted publickey for") && l.ends_with(&accepted)),
        "sshd did not log a login with the encrypted key ({accepted})"
    );
    // `IdentityFile KEY.pub` (how hardware-key and password-manager agents are set up):
    // the public key picks the agent's key; no private key file is needed.
    let pub_only = dir.path().join("only.pub");
    std::fs::copy(
        format!("{}.pub", fleet.locked_identity.display()),
        &pub_only,
    )
    .unwrap();
    let opts = identities_only(&fleet, "site009", &config, &pub_only);
    let out = run_bounded(&runtime, opts, "echo by pub")
        .unwrap_or_else(|e| panic!("IdentityFile KEY.pub with the key in the agent: {e}"));
    assert_eq!(out.stdout_text(), "by pub\n");

    let ecdsa = fingerprint(&fleet.ecdsa_identity);
    assert!(
        !log.lines()
            .any(|l| l.contains("Accepted publickey for") && l.ends_with(&ecdsa)),
        "IdentitiesOnly: the agent's other key was used"
    );
}
