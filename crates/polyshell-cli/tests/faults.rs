//! The fault matrix: sick hosts, cancellation, hostile input, secrets. Each test is one row
//! of the matrix in issue "Reliability and security" and fails if the behaviour regresses.

use assert_cmd::Command;
use polyshell_shell::{ErrorKind, HostKeyPolicy, Shell, SshOptions};
use polyshell_tests::{count_processes, toml_string, wait_for, Fleet, OwnSshd};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn polyshell(fleet: &Fleet, dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("polyshell").unwrap();
    cmd.current_dir(dir)
        .env_remove("POLYSHELL_SUDO_PASSWORD")
        .env("NO_COLOR", "1")
        .env(
            "POLYSHELL_RUNS_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/runs"),
        )
        .args(["--ssh-config", &fleet.ssh_config.display().to_string()]);
    cmd
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A fake server on loopback: `behaviour` gets each accepted connection.
fn fake_server(behaviour: fn(std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || behaviour(stream));
        }
    });
    port
}

fn dead_shell(fleet: &Fleet, port: u16) -> Shell {
    let mut opts = SshOptions::new("127.0.0.1");
    opts.port = Some(port);
    opts.ssh_config = Some(fleet.ssh_config.clone());
    opts.connect_timeout = Some(Duration::from_secs(2));
    Shell::with_ssh(opts)
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn dead_hosts_fail_alone_naming_the_cause() {
    let fleet = Fleet::load();
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = fake_server(|s| {
        std::thread::sleep(Duration::from_secs(30));
        drop(s)
    });
    let banner_then_silence = fake_server(|mut s| {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n");
        std::thread::sleep(Duration::from_secs(30));
    });
    let drops_mid_handshake = fake_server(|mut s| {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n");
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        drop(s);
    });
    runtime().block_on(async {
        let started = Instant::now();
        let shells = [refused, silent, banner_then_silence, drops_mid_handshake]
            .map(|p| dead_shell(&fleet, p));
        let good: Vec<Shell> = ["site043", "site044", "site045"]
            .iter()
            .map(|s| {
                let mut o = SshOptions::new(*s);
                o.ssh_config = Some(fleet.ssh_config.clone());
                Shell::with_ssh(o)
            })
            .collect();
        let (dead, alive) = tokio::join!(
            futures::future::join_all(shells.iter().map(|s| s.run("true"))),
            futures::future::join_all(good.iter().map(|s| s.run("true")))
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a dead host held the run up"
        );
        assert!(alive
            .iter()
            .all(|r| r.as_ref().is_ok_and(|o| o.status.success())));
        let errors: Vec<_> = dead.into_iter().map(|r| r.unwrap_err()).collect();
        assert!(
            matches!(errors[0].kind, ErrorKind::Refused { .. }),
            "{}",
            errors[0]
        );
        assert!(
            matches!(errors[1].kind, ErrorKind::ConnectTimeout { .. }),
            "{}",
            errors[1]
        );
        assert!(
            matches!(errors[2].kind, ErrorKind::ConnectTimeout { .. }),
            "{}",
            errors[2]
        );
        assert!(
            matches!(errors[3].kind, ErrorKind::Handshake { .. }),
            "{}",
            errors[3]
        );
        for (e, port) in
            errors
                .iter()
                .zip([refused, silent, banner_then_silence, drops_mid_handshake])
        {
            assert!(
                e.to_string().contains(&format!("127.0.0.1:{port}")),
                "names the host: {e}"
            );
        }
    });
}

/// A libssh2 shell to `sshd` on `addr`, as the fleet's user, keepalives every `keepalive` s.
fn own_shell(sshd: &OwnSshd, fleet: &Fleet, addr: &str, keepalive: u64) -> Shell {
    let mut opts = SshOptions::new(addr);
    opts.port = Some(2222);
    opts.user = Some(fleet.user.clone());
    opts.identity = Some(fleet.identity.clone());
    opts.ssh_config = Some(fleet.ssh_config.clone());
    opts.known_hosts = Some(sshd.known_hosts.clone());
    opts.host_key_policy = Some(HostKeyPolicy::AcceptNew);
    opts.keepalive = Some(Duration::from_secs(keepalive));
    Shell::with_ssh(opts)
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn sshd_killed_while_a_command_runs_is_connection_lost() {
    let fleet = Fleet::load();
    let sshd = OwnSshd::start(&fleet, "127.79.0.1");
    runtime().block_on(async {
        let shell = own_shell(&sshd, &fleet, "127.79.0.1", 15);
        shell.run("true").await.unwrap();
        let running = shell.run("sleep 30");
        let killer = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sshd.signal_all(libc::SIGKILL);
        };
        let started = Instant::now();
        let (result, ()) = tokio::join!(running, killer);
        let err = result.unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::ConnectionLost { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("connection to 127.79.0.1 lost"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    });
}

/// Runs `commands` one after another on one connection (as a site-sequential schedule
/// does), each within 20 s; their outputs.
async fn one_after_another(shell: &Shell, commands: &[&str]) -> Vec<String> {
    let mut outputs = Vec::new();
    for command in commands {
        let out = tokio::time::timeout(Duration::from_secs(20), shell.run(*command))
            .await
            .unwrap_or_else(|_| panic!("`{command}` hung"))
            .unwrap_or_else(|e| panic!("`{command}`: {e}"));
        outputs.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    outputs
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn commands_one_after_another_where_the_server_allows_one_session() {
    // The connection opens the next command's channel ahead while one runs: a server with
    // `MaxSessions 1` refuses that one, and every command must still run.
    let fleet = Fleet::load();
    let sshd = OwnSshd::start_with(&fleet, "127.79.0.3", "MaxSessions 1");
    runtime().block_on(async {
        let shell = own_shell(&sshd, &fleet, "127.79.0.3", 15);
        let commands = ["echo 1", "echo 2", "sleep 0.3; echo 3", "echo 4", "echo 5"];
        assert_eq!(
            one_after_another(&shell, &commands).await,
            ["1", "2", "3", "4", "5"]
        );
        // Two at once on one session allowed: the second is refused, named as such.
        let (a, b) = tokio::join!(shell.run("sleep 1; echo a"), shell.run("sleep 1; echo b"));
        let failed: Vec<String> = [a, b]
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
    });
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_host_that_goes_silent_is_caught_by_keepalives() {
    let fleet = Fleet::load();
    let sshd = OwnSshd::start(&fleet, "127.79.0.2");
    runtime().block_on(async {
        let shell = own_shell(&sshd, &fleet, "127.79.0.2", 1);
        shell.run("true").await.unwrap();
        let running = shell.run("sleep 30");
        let freezer = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sshd.signal_all(libc::SIGSTOP); // no FIN, no RST: only keepalives can tell
        };
        let started = Instant::now();
        let (result, ()) = tokio::join!(running, freezer);
        let err = result.unwrap_err();
        assert!(
            matches!(err.kind, ErrorKind::ConnectionLost { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("keepalive"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the keepalive bound is 3 x 1 s"
        );
    });
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_command_over_its_timeout_fails_and_is_gone() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let out = polyshell(&fleet, dir.path())
        .args([
            "--timeout",
            "1",
            "-H",
            "site046",
            "run",
            "--",
            "sleep 30.51",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("timed out after 1s"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        wait_for(5, || count_processes("[s]leep 30.51") == 0),
        "the remote sleep survived"
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn ctrl_c_during_a_100_site_run_terminates_every_remote_command() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .current_dir(dir.path())
        .args([
            "--ssh-config",
            &fleet.ssh_config.display().to_string(),
            "-H",
            "site[101-200]",
            "run",
            "--",
            "sleep 60.71",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(60, || count_processes("[s]leep 60.71") >= 100),
        "the 100 commands did not all start"
    );
    let pid = child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(pid, libc::SIGINT) };
    assert!(
        wait_for(30, || matches!(child.try_wait(), Ok(Some(_)))),
        "polyshell did not end after two Ctrl-C"
    );
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stopping: no new work starts; 100 site(s) still running"),
        "{stderr}"
    );
    assert!(
        stderr.contains("polyshell: 100 sites: 0 ok, 100 failed"),
        "the summary prints: {stderr}"
    );
    assert!(
        wait_for(15, || count_processes("[s]leep 60.71") == 0),
        "remote commands survived the cancel"
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn unknown_keys_wrong_users_and_unauthorized_keys_are_actionable() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let site = fleet.site("site047").clone();
    // A config that names no key: only the key we give is tried.
    let cfg = dir.path().join("config");
    std::fs::write(
        &cfg,
        format!(
            "Host *\n  UserKnownHostsFile {}\n",
            fleet.known_hosts.display()
        ),
    )
    .unwrap();
    let key = dir.path().join("stranger");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let opts = |user: &str, identity: &Path, known: Option<&Path>| {
        let mut o = SshOptions::new(&site.addr);
        o.port = Some(site.port);
        o.user = Some(user.to_owned());
        o.identity = Some(identity.to_owned());
        o.ssh_config = Some(cfg.clone());
        o.known_hosts = known.map(Path::to_owned);
        o
    };
    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    runtime().block_on(async {
        let err = Shell::with_ssh(opts(&fleet.user, &fleet.identity, Some(&empty)))
            .run("touch never-ran")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is not known") && err.to_string().contains("ssh-keyscan"),
            "{err}"
        );
        let err = Shell::with_ssh(opts("nosuchuser", &fleet.identity, None))
            .run("true")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("authentication as `nosuchuser`"),
            "{err}"
        );
        let err = Shell::with_ssh(opts(&fleet.user, &key, None))
            .run("true")
            .await
            .unwrap_err();
        assert!(matches!(err.kind, ErrorKind::AuthFailed { .. }), "{err}");
        assert!(
            err.to_string().contains("stranger"),
            "names the key it tried: {err}"
        );
        // Strict mode stopped before authenticating: the command never ran.
        let mut check = SshOptions::new("site047");
        check.ssh_config = Some(fleet.ssh_config.clone());
        let out = Shell::with_ssh(check)
            .run("ls never-ran 2>/dev/null | wc -l")
            .await
            .unwrap();
        assert_eq!(out.stdout_text().trim(), "0");
    });
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn binary_long_and_unterminated_output_is_intact_in_json() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let file = "/tmp/polyshell-fault-output.bin";
    let script = format!(
        "head -c 2000000 /dev/urandom > {file}; head -c 300000 /dev/zero | tr '\\0' y >> {file}; chmod 644 {file}; cat {file}"
    );
    let out = polyshell(&fleet, dir.path())
        .args(["--output", "json", "-H", "site048", "run", "--", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read(file).unwrap();
    let mut got = Vec::new();
    use base64::Engine;
    for line in text(&out.stdout).lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["event"] == "output" && e["stream"] == "stdout" {
            match (e["line"].as_str(), e["line_base64"].as_str()) {
                (Some(t), _) => got.extend_from_slice(t.as_bytes()),
                (None, Some(b)) => {
                    got.extend(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                }
                _ => panic!("an output event without bytes: {line}"),
            }
            if e["newline"] == true {
                got.push(b'\n');
            }
        }
    }
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ");
    let _ = std::fs::remove_file(file);
}

/// A gigabyte of binary zeros: one enormous line without a newline, streamed in pieces.
#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_gigabyte_through_the_cli_in_bounded_memory() {
    let fleet = Fleet::load();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .args([
            "--ssh-config",
            &fleet.ssh_config.display().to_string(),
            "-H",
            "site049",
            "run",
            "--",
            "head -c 1000000000 /dev/zero",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 reaps our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let peak_mb = usage.ru_maxrss / 1024;
    assert!(
        peak_mb < 96,
        "polyshell peaked at {peak_mb} MB for 1 GB of output"
    );
    std::mem::forget(child);
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn sudo_with_no_way_to_ask_fails_fast() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .current_dir(dir.path())
        .args([
            "--ssh-config",
            &fleet.ssh_config.display().to_string(),
            "-H",
            "site050",
            "run",
            "--sudo",
            "--",
            "id -u",
        ])
        .env_remove("POLYSHELL_SUDO_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output_without_tty();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no terminal to ask on; set POLYSHELL_SUDO_PASSWORD"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

trait NoTty {
    fn output_without_tty(&mut self) -> std::process::Output;
}

impl NoTty for std::process::Command {
    /// Runs detached from any controlling terminal (a new session), as under cron or CI.
    fn output_without_tty(&mut self) -> std::process::Output {
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            self.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        self.output().unwrap()
    }
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_thousand_sites_with_a_soft_file_limit_of_1024() {
    let fleet = Fleet::load();
    assert!(fleet.sites.len() >= 500, "needs the 500-site fleet");
    let dir = tempfile::tempdir().unwrap();
    let mut polyfile = String::new();
    for copy in ["a", "b"] {
        for s in fleet.sites.iter().take(500) {
            polyfile.push_str(&format!(
                "[sites.{copy}-{}]\nhost = \"{}\"\n",
                s.name, s.name
            ));
        }
    }
    std::fs::write(dir.path().join("Polyfile.toml"), polyfile).unwrap();
    let cfg = fleet.ssh_config.display().to_string();
    let bin = env!("CARGO_BIN_EXE_polyshell");
    let out = std::process::Command::new("sh")
        .current_dir(dir.path())
        .args(["-c", &format!("ulimit -Sn 1024 && exec '{bin}' --ssh-config '{cfg}' --output quiet run --on all -- true")])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("1000 sites: 1000 ok"), "{stderr}");
    assert!(!stderr.contains("Too many open files"), "{stderr}");
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn hostile_site_values_are_substituted_as_data() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let marker = "/tmp/polyshell-pwned";
    let _ = std::fs::remove_file(marker);
    let value = format!("it's \"quoted\"; touch {marker} $(touch {marker}) `touch {marker}`");
    let polyfile = format!(
        "[sites.victim]\nhost = \"site051\"\nword = {}\n\n[[jobs.echo]]\nroles = [\"victim\"]\nrun = \"printf '%s\\\\n' {{site.word}}\"\n",
        toml_string(&value)
    );
    std::fs::write(dir.path().join("Polyfile.toml"), polyfile).unwrap();
    let out = polyshell(&fleet, dir.path())
        .args(["jobs", "echo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("victim | {value}\n"));
    assert!(
        !Path::new(marker).exists(),
        "a substituted value was executed"
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn the_password_is_in_no_byte_the_cli_writes() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    for mode in ["stream", "gather", "json"] {
        let out = polyshell(&fleet, dir.path())
            .env("POLYSHELL_SUDO_PASSWORD", &fleet.password)
            .args([
                "-vvv",
                "--output",
                mode,
                "-H",
                "site[052-056]",
                "run",
                "--sudo",
                "--",
                "id -u; echo done",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        let all = [out.stdout.clone(), out.stderr.clone()].concat();
        assert!(
            !text(&all).contains(&fleet.password),
            "{mode}: the password was written"
        );
        assert!(
            text(&out.stderr).contains("TRACE") || text(&out.stderr).contains("DEBUG"),
            "-vvv logs were on"
        );
    }
    // A wrong password too: errors name the agent, never the secret.
    let out = polyshell(&fleet, dir.path())
        .env("POLYSHELL_SUDO_PASSWORD", "hunter2-wrong")
        .args(["-vvv", "-H", "site057", "run", "--sudo", "--", "id -u"])
        .output()
        .unwrap();
    assert!(!text(&[out.stdout, out.stderr].concat()).contains("hunter2-wrong"));
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn an_encrypted_key_with_no_way_to_ask_fails_naming_the_key_and_the_ways_out() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet.ssh_config_with_key(dir.path(), &fleet.locked_identity);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .current_dir(dir.path())
        .args(["--ssh-config", &config.display().to_string()])
        .args(["-H", "site[010-012]", "run", "--", "true"])
        .env_remove("SSH_ASKPASS")
        .env(
            "POLYSHELL_RUNS_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/runs"),
        )
        .stdin(std::process::Stdio::null())
        .output_without_tty();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let named = format!(
        "{}: key is encrypted and there is no terminal",
        fleet.locked_identity.display()
    );
    for part in [
        named.as_str(),
        "add the key to ssh-agent (ssh-add)",
        "run from a terminal",
        "3 sites: 0 ok, 3 failed",
    ] {
        assert!(stderr.contains(part), "`{part}` missing from:\n{stderr}");
    }
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn ssh_askpass_is_asked_once_for_twenty_sites_and_the_passphrase_is_nowhere() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let calls = dir.path().join("askpass-calls");
    let askpass = dir.path().join("askpass");
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\necho '{}'\n",
            calls.display(),
            fleet.key_passphrase
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    for key in [&fleet.locked_identity, &fleet.locked_ecdsa_identity] {
        let _ = std::fs::remove_file(&calls);
        let config = fleet.ssh_config_with_key(dir.path(), key);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
            .current_dir(dir.path())
            .args(["--ssh-config", &config.display().to_string()])
            .args(["-vvv", "-H", "site[021-040]", "run", "--", "echo up"])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("POLYSHELL_RUNS_DIR", &runs)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output_without_tty();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", key.display());
        assert_eq!(
            text(&out.stdout).matches("| up").count(),
            20,
            "{}",
            text(&out.stdout)
        );
        let asked = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(
            asked.lines().count(),
            1,
            "one question for 20 sites: {asked}"
        );
        assert!(
            asked.contains(&format!("passphrase for key {}", key.display())),
            "{asked}"
        );
        assert!(stderr.contains("TRACE"), "-vvv logs were on");
        let all = text(&[out.stdout, out.stderr].concat());
        assert!(
            !all.contains(&fleet.key_passphrase),
            "the passphrase was written"
        );
    }
    // Nor is it in the run ledger.
    let mut files = vec![runs];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !text(&bytes).contains(&fleet.key_passphrase),
                "the passphrase is in {}",
                path.display()
            );
        }
    }
}
