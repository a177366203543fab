//! Authentication through a real `ssh-agent`. Its own test binary: `SSH_AUTH_SOCK` is
//! process-wide, and no other test may see this agent.

mod common;

use common::{fingerprint, keygen, only_key};
use polyshell_shell::{ErrorKind, Shell};
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
    let out = runtime
        .block_on(async {
            let shell = Shell::with_ssh(only_key(&fleet, "site004", &missing));
            tokio::time::timeout(Duration::from_secs(30), shell.run("echo via agent")).await
        })
        .expect("agent login did not finish in 30 s")
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
    std::fs::write(
        &config,
        format!(
            "Host *\n  IdentitiesOnly yes\n  IdentityFile {}\n",
            stranger.display()
        ),
    )
    .unwrap();
    let mut opts = only_key(&fleet, "site004", &stranger);
    opts.identity = None;
    opts.ssh_config = Some(config);
    let err = runtime
        .block_on(async {
            let shell = Shell::with_ssh(opts);
            tokio::time::timeout(Duration::from_secs(30), shell.run("true")).await
        })
        .expect("refused login did not finish in 30 s")
        .unwrap_err();
    match &err.kind {
        ErrorKind::AuthFailed { tried, .. } => {
            assert_eq!(tried, &stranger.display().to_string(), "{err}")
        }
        other => panic!("expected an authentication error, got {other}"),
    }
}
