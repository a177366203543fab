//! polyshell-shell against the real fleet: exec, streaming, concurrency, host keys,
//! ProxyJump, cancellation, timeouts, dead hosts, file transfer, fan-out.

mod common;

use common::{bounded, eventually, fingerprint, keygen, only_key, options, ssh};
use polyshell_shell::{
    Command, ErrorKind, ExitStatus, HostKeyPolicy, Line, OutputSink, Shell, Stream,
};
use polyshell_tests::Fleet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Both transports a remote site can use: libssh2, and the system OpenSSH client.
fn remote_shells(fleet: &Fleet, site: &str) -> Vec<(&'static str, Shell)> {
    let args = vec!["-F".to_owned(), fleet.ssh_config.display().to_string()];
    vec![
        ("libssh2", ssh(fleet, site)),
        ("openssh", Shell::external_ssh("ssh", args, site)),
    ]
}

async fn exec_basics(label: &str, shell: &Shell) {
    let out = shell.run("echo out; echo err >&2; exit 3").await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(3), "{label}");
    assert_eq!(out.stdout_text(), "out\n", "{label}");
    assert_eq!(
        out.stderr_text(),
        "err\n",
        "{label}: stderr must not carry the pid marker"
    );

    let out = shell.run("kill -9 $$").await.unwrap();
    // OpenSSH's client exits 255 when the remote command dies of a signal.
    let expected = if label == "openssh" {
        ExitStatus::Code(255)
    } else {
        ExitStatus::Signal(9)
    };
    assert_eq!(out.status, expected, "{label}");

    let cmd = Command::new("echo \"$GREETING\" && pwd")
        .env("GREETING", "it's $(not run)")
        .cwd("/tmp");
    let out = shell.run(cmd).await.unwrap();
    assert_eq!(out.stdout_text(), "it's $(not run)\n/tmp\n", "{label}");

    let out = shell.run(["false", "echo never"]).await.unwrap();
    assert_eq!(
        (out.status, out.stdout.len()),
        (ExitStatus::Code(1), 0),
        "{label}"
    );

    let out = shell
        .run(Command::new("cat").stdin("fed through stdin"))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "fed through stdin", "{label}");

    let out = shell
        .run(Command::new("cd /nonexistent-dir && echo no").cwd("/nonexistent"))
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "{label}: a missing cwd fails the command"
    );

    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let out = shell
        .run(Command::new("cat").stdin(bytes.clone()))
        .await
        .unwrap();
    assert_eq!(out.stdout, bytes, "{label}: binary output intact");
}

#[tokio::test]
async fn local_exec_basics() {
    exec_basics("local", &Shell::local()).await;
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn remote_exec_basics_through_both_transports() {
    let fleet = Fleet::load();
    for (label, shell) in remote_shells(&fleet, "site001") {
        bounded(label, 60, exec_basics(label, &shell)).await;
        let out = shell.run("echo $SSH_CONNECTION").await.unwrap();
        assert_eq!(
            out.stdout_text().split_whitespace().nth(2),
            Some("127.77.0.1"),
            "{label}"
        );
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn one_connection_serves_every_command() {
    let fleet = Fleet::load();
    let shell = ssh(&fleet, "site002");
    let mut ports = Vec::new();
    for _ in 0..3 {
        let out = shell.run("echo $SSH_CONNECTION").await.unwrap();
        ports.push(
            out.stdout_text()
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned(),
        );
    }
    // A clone shares the connection too.
    let out = shell
        .clone()
        .with_issuer("other")
        .run("echo $SSH_CONNECTION")
        .await
        .unwrap();
    ports.push(
        out.stdout_text()
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned(),
    );
    assert!(
        ports.iter().all(|p| p == &ports[0] && !p.is_empty()),
        "client ports differ: {ports:?}"
    );
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn concurrent_commands_on_one_site_run_concurrently() {
    let fleet = Fleet::load();
    let shell = ssh(&fleet, "site003");
    let dir = shell
        .run("mktemp -d")
        .await
        .unwrap()
        .stdout_text()
        .trim()
        .to_owned();
    shell.run(format!("mkfifo {dir}/a {dir}/b")).await.unwrap();
    // Each waits for the other: they can only finish if both run at once.
    let first = shell.run(format!("echo 1 > {dir}/a; read x < {dir}/b; echo got $x"));
    let second = shell.run(format!("read y < {dir}/a; echo 2 > {dir}/b; echo got $y"));
    let (first, second) = bounded("the fifo rendezvous", 30, async {
        tokio::join!(first, second)
    })
    .await;
    assert_eq!(first.unwrap().stdout_text(), "got 2\n");
    assert_eq!(second.unwrap().stdout_text(), "got 1\n");
    shell.run(format!("rm -rf {dir}")).await.unwrap();
}

/// (issuer, stream, bytes, ended with a newline)
type Recorded = (String, Stream, Vec<u8>, bool);

#[derive(Default)]
struct Recorder(Mutex<Vec<Recorded>>);

impl OutputSink for Recorder {
    fn line(&self, issuer: &str, line: Line<'_>) {
        self.0.lock().unwrap().push((
            issuer.to_owned(),
            line.stream,
            line.bytes.to_vec(),
            line.newline,
        ));
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn output_streams_as_tagged_lines_while_the_command_runs() {
    let fleet = Fleet::load();
    let recorder = Arc::new(Recorder::default());
    let shell = ssh(&fleet, "site004")
        .with_sink(recorder.clone())
        .with_issuer("[B-1-1] site004");
    let watcher = recorder.clone();
    // The first line must arrive while the command still waits for its second.
    let run = shell.run("echo first; echo warn >&2; sleep 1; printf last");
    let seen_early = async { eventually(10, async || !watcher.0.lock().unwrap().is_empty()).await };
    let (out, early) = bounded("streaming", 30, async { tokio::join!(run, seen_early) }).await;
    assert!(early);
    out.unwrap();
    let lines = recorder.0.lock().unwrap().clone();
    assert!(lines.iter().all(|l| l.0 == "[B-1-1] site004"));
    assert!(lines.contains(&(
        "[B-1-1] site004".into(),
        Stream::Stdout,
        b"first".to_vec(),
        true
    )));
    assert!(lines.contains(&(
        "[B-1-1] site004".into(),
        Stream::Stderr,
        b"warn".to_vec(),
        true
    )));
    assert!(lines.contains(&(
        "[B-1-1] site004".into(),
        Stream::Stdout,
        b"last".to_vec(),
        false
    )));
}

fn temp_known_hosts(
    fleet: &Fleet,
    site: &str,
    content: &str,
) -> (tempfile::TempDir, polyshell_shell::SshOptions) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("known_hosts");
    std::fs::write(&file, content).unwrap();
    let mut opts = options(fleet, site);
    opts.known_hosts = Some(file);
    (dir, opts)
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn host_keys_strict_accept_new_and_changed() {
    let fleet = Fleet::load();
    let site = fleet.site("site005").clone();

    let (_dir, opts) = temp_known_hosts(&fleet, &site.name, "");
    let err = Shell::with_ssh(opts).run("true").await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::HostKeyUnknown { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("127.77.0.5"),
        "names the host: {err}"
    );

    let (dir, mut opts) = temp_known_hosts(&fleet, &site.name, "");
    opts.host_key_policy = Some(HostKeyPolicy::AcceptNew);
    Shell::with_ssh(opts.clone()).run("true").await.unwrap();
    let recorded = std::fs::read_to_string(dir.path().join("known_hosts")).unwrap();
    assert!(
        recorded.starts_with("[127.77.0.5]:2222 ssh-ed25519 "),
        "{recorded}"
    );
    // Recorded: now strict accepts it.
    opts.host_key_policy = Some(HostKeyPolicy::Strict);
    Shell::with_ssh(opts).run("true").await.unwrap();

    // A different key for the host: refused even under accept-new.
    let other_key = std::fs::read_to_string(fleet.identity.with_extension("pub")).unwrap();
    let other_key: Vec<&str> = other_key.split_whitespace().take(2).collect();
    let (_dir, mut opts) = temp_known_hosts(
        &fleet,
        &site.name,
        &format!("[127.77.0.5]:2222 {}\n", other_key.join(" ")),
    );
    opts.host_key_policy = Some(HostKeyPolicy::AcceptNew);
    let err = Shell::with_ssh(opts).run("true").await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::HostKeyChanged { .. }),
        "{err}"
    );
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn keys_sign_in_process_or_through_libssh2_and_failures_name_the_key() {
    let fleet = Fleet::load();
    // ed25519 is signed in process; ECDSA goes through libssh2's own key file handling.
    for (key, kind) in [
        (&fleet.identity, "ED25519"),
        (&fleet.ecdsa_identity, "ECDSA"),
    ] {
        let shell = Shell::with_ssh(only_key(&fleet, "site003", key));
        let out = bounded("run with one key", 30, shell.run("echo ok"))
            .await
            .unwrap_or_else(|e| panic!("{kind} key {}: {e}", key.display()));
        assert_eq!(out.stdout_text(), "ok\n");
        let accepted = format!("ssh2: {kind} {}", fingerprint(key));
        let log = std::fs::read_to_string(fleet.log_of(fleet.site("site003"))).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("Accepted publickey for") && l.ends_with(&accepted)),
            "sshd did not log `{accepted}`"
        );
    }

    // A key the site does not know, and an encrypted one (no passphrase can be given): both
    // fail as an authentication error that names the key, without hanging.
    let dir = tempfile::tempdir().unwrap();
    let (stranger, locked) = (dir.path().join("stranger"), dir.path().join("locked"));
    keygen(&stranger, "");
    keygen(&locked, "a passphrase nobody types");
    for key in [&stranger, &locked] {
        let shell = Shell::with_ssh(only_key(&fleet, "site003", key));
        let err = bounded("run with a refused key", 30, shell.run("true"))
            .await
            .unwrap_err();
        match &err.kind {
            ErrorKind::AuthFailed { tried, .. } => {
                assert!(tried.contains(&key.display().to_string()), "{err}")
            }
            other => panic!(
                "{}: expected an authentication error, got {other}",
                key.display()
            ),
        }
    }
}

/// The proxied site's sshd offers ed25519 and ECDSA host keys; libssh2 prefers ed25519. The
/// key type negotiated must be one known_hosts records, or a host recorded with its ECDSA key
/// would look "changed".
#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn a_host_with_two_key_types_is_checked_against_the_recorded_one() {
    let fleet = Fleet::load();
    let label = format!("[{}]:{}", fleet.proxied.addr, fleet.proxied.port);
    let public = |file: &str| -> String {
        let text = std::fs::read_to_string(fleet.dir.join(file)).unwrap();
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("host_ed25519.pub", true),
        ("host_ecdsa.pub", true),
        // Another ed25519 key recorded for the host: changed, whatever else it offers.
        ("id_ed25519.pub", false),
    ];
    for (file, accepted) in cases {
        let known_hosts = dir.path().join(format!("known_hosts-{file}"));
        std::fs::write(&known_hosts, format!("{label} {}\n", public(file))).unwrap();
        let mut opts = only_key(&fleet, "proxied", &fleet.identity);
        opts.known_hosts = Some(known_hosts);
        let result = bounded("direct run", 30, Shell::with_ssh(opts).run("echo ok")).await;
        match (result, accepted) {
            (Ok(out), true) => assert_eq!(out.stdout_text(), "ok\n", "{file}"),
            (Err(err), false) => assert!(
                matches!(err.kind, ErrorKind::HostKeyChanged { .. }),
                "{file}: {err}"
            ),
            (Ok(_), false) => panic!("{file}: a changed host key was accepted"),
            (Err(err), true) => panic!("{file}: {err}"),
        }
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn proxy_jump_reaches_the_proxied_site_through_the_bastion() {
    let fleet = Fleet::load();
    let shell = ssh(&fleet, "proxied");
    let out = bounded("proxied run", 30, shell.run("echo $SSH_CONNECTION"))
        .await
        .unwrap();
    assert_eq!(
        out.stdout_text().split_whitespace().nth(2),
        Some("127.78.0.2")
    );
    let log = std::fs::read_to_string(fleet.log_of(&fleet.bastion)).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("direct_tcpip") && l.contains("target 127.78.0.2 port 2222")),
        "the bastion's log shows no forwarding to the proxied site"
    );
    // Two bastions in a row: bastion, then site010, then the proxied site.
    let mut opts = options(&fleet, "proxied");
    opts.proxy_jump = Some("bastion,site010".into());
    let out = bounded(
        "two jumps",
        30,
        Shell::with_ssh(opts).run("echo $SSH_CONNECTION"),
    )
    .await
    .unwrap();
    assert_eq!(
        out.stdout_text().split_whitespace().nth(2),
        Some("127.78.0.2")
    );
    let log = std::fs::read_to_string(fleet.log_of(&fleet.bastion)).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("direct_tcpip") && l.contains("target 127.77.0.10 port 2222")),
        "the first bastion did not forward to the second"
    );
    // And a transfer through the bastion.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "via bastion").unwrap();
    shell
        .upload(dir.path().join("f"), "proxied-upload.txt")
        .await
        .unwrap();
    assert_eq!(
        shell
            .run("cat proxied-upload.txt && rm proxied-upload.txt")
            .await
            .unwrap()
            .stdout_text(),
        "via bastion"
    );
}

async fn sleeps_left(shell: &Shell, tag: &str) -> usize {
    // `[s]leep` does not match the command line of the shell running pgrep itself.
    let out = shell
        .run(format!("pgrep -f '[s]leep {tag}' | wc -l"))
        .await
        .unwrap();
    out.stdout_text().trim().parse().unwrap_or(usize::MAX)
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn cancelled_and_timed_out_commands_leave_nothing_running() {
    let fleet = Fleet::load();
    let shell = ssh(&fleet, "site006");
    let checker = ssh(&fleet, "site006");

    // Dropped after 1 s (the caller gave up): the remote process group is terminated.
    let cancelled = tokio::time::timeout(
        Duration::from_secs(1),
        shell.run("sleep 10.1 ; echo unreachable"),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the command should still have been running"
    );
    assert!(
        eventually(8, async || sleeps_left(&checker, "10.1").await == 0).await,
        "sleep 10.1 still runs"
    );

    // A command timeout terminates it before reporting.
    let err = shell
        .run(Command::new("sleep 10.2 & sleep 10.2; wait").timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Timeout(_)), "{err}");
    assert_eq!(
        sleeps_left(&checker, "10.2").await,
        0,
        "timed out sleeps survived"
    );

    // The connection is still good afterwards.
    assert!(shell.run("true").await.unwrap().status.success());

    // Local processes: the whole process group goes.
    let local = Shell::local();
    let err = local
        .run(Command::new("sleep 10.3 & sleep 10.3; wait").timeout(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Timeout(_)));
    assert_eq!(
        sleeps_left(&local, "10.3").await,
        0,
        "local sleeps survived"
    );
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn refused_and_silent_hosts_fail_while_others_succeed() {
    let fleet = Fleet::load();
    let refused_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Accepts TCP (the kernel completes the handshake) but never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let dead = |port: u16| {
        let mut opts = polyshell_shell::SshOptions::new("127.0.0.1");
        opts.port = Some(port);
        opts.ssh_config = Some(fleet.ssh_config.clone());
        opts.connect_timeout = Some(Duration::from_secs(2));
        Shell::with_ssh(opts)
    };
    let (a, b, c) = (
        dead(refused_port),
        dead(silent_port),
        ssh(&fleet, "site007"),
    );
    let (refused, silent_result, good) = bounded("dead hosts", 30, async {
        tokio::join!(a.run("true"), b.run("true"), c.run("true"))
    })
    .await;
    let refused = refused.unwrap_err();
    assert!(
        matches!(refused.kind, ErrorKind::Refused { .. }),
        "{refused}"
    );
    let silent_err = silent_result.unwrap_err();
    assert!(
        matches!(silent_err.kind, ErrorKind::ConnectTimeout { .. }),
        "{silent_err}"
    );
    assert!(
        silent_err
            .to_string()
            .contains(&format!("127.0.0.1:{silent_port}")),
        "{silent_err}"
    );
    assert!(good.unwrap().status.success());
    drop(silent);
}

fn tree(root: &std::path::Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let content = if meta.is_dir() {
            Vec::new()
        } else {
            std::fs::read(e.path()).unwrap()
        };
        out.push((rel, meta.permissions().mode() & 0o7777, content));
    }
    out.sort();
    out
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn upload_download_round_trip_keeps_bytes_and_modes() {
    use std::os::unix::fs::PermissionsExt;
    let fleet = Fleet::load();
    let shell = ssh(&fleet, "site008");
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("tree");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        root.join("script.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(root.join("sub/secret"), "s").unwrap();
    std::fs::set_permissions(
        root.join("sub/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("sub/deeper/big.bin"), &big).unwrap();
    std::fs::set_permissions(
        root.join("sub/deeper"),
        std::fs::Permissions::from_mode(0o710),
    )
    .unwrap();

    shell
        .run("rm -rf rt && mkdir -p rt/old && echo stale > rt/script.sh")
        .await
        .unwrap();
    // `rt/copy` does not exist yet (created with parents); `rt` existed: same rule.
    bounded("upload", 60, shell.upload(&root, "rt/copy/tree"))
        .await
        .unwrap();
    bounded("upload again", 60, shell.upload(&root, "rt/copy/tree"))
        .await
        .unwrap();
    let out = shell
        .run("stat -c '%a %n' rt/copy/tree/script.sh rt/copy/tree/sub/secret")
        .await
        .unwrap();
    assert_eq!(
        out.stdout_text(),
        "750 rt/copy/tree/script.sh\n600 rt/copy/tree/sub/secret\n"
    );

    let back = tempfile::tempdir().unwrap();
    bounded(
        "download",
        60,
        shell.download("rt/copy/tree", back.path().join("tree")),
    )
    .await
    .unwrap();
    assert_eq!(tree(&root), tree(&back.path().join("tree")));

    // A single file into an existing directory.
    bounded(
        "file upload",
        30,
        shell.upload(root.join("script.sh"), "rt"),
    )
    .await
    .unwrap();
    assert_eq!(
        shell.run("cat rt/script.sh").await.unwrap().stdout_text(),
        "#!/bin/sh\necho hi\n"
    );
    shell.run("rm -rf rt").await.unwrap();
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn five_hundred_sites_at_once() {
    let fleet = Fleet::load();
    assert!(
        fleet.sites.len() >= 500,
        "this test needs a 500-site fleet (cargo xtask test starts one)"
    );
    let shells: Vec<Shell> = fleet
        .sites
        .iter()
        .take(500)
        .map(|s| ssh(&fleet, &s.name))
        .collect();
    let results = bounded("500 sites", 300, async {
        let runs = shells.iter().map(|s| s.run("true"));
        futures::future::join_all(runs).await
    })
    .await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} sites failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}
