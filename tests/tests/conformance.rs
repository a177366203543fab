//! The transport conformance suite: one list of behaviours, each run against every transport
//! (local, libssh2, libssh2 through the keeper, libssh2 with the resident shell, the system
//! OpenSSH client) and, for the SSH ones, every login shell of the
//! fleet (dash, bash, busybox sh, zsh, fish). A behaviour a transport cannot have is checked
//! as the documented difference, never skipped.
//!
//! `conformance_matrix` runs the whole table and writes it to `target/conformance.txt`
//! (`cargo xtask test` prints it at the end); the named tests after it are the cases that
//! broke on real hosts, each on its own.

mod common;

use common::bounded;
use polyshell_auth::{PasswordAgent, ScriptedPrompter};
use polyshell_shell::{Command, ErrorKind, ExitStatus, Shell, ShellError, SshOptions};
use polyshell_tests::{Fleet, FleetSite, ShellSite};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a cell reaches its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Transport {
    Local,
    Libssh2,
    /// libssh2 through the connection keeper (`--persist`).
    Kept,
    /// libssh2 with plain commands in the connection's resident shell
    /// (`SshOptions::resident_shell`).
    Resident,
    OpenSsh,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Local => "local",
            Transport::Libssh2 => "libssh2",
            Transport::Kept => "kept",
            Transport::Resident => "resident",
            Transport::OpenSsh => "openssh",
        }
    }
}

/// One cell's target: a transport and, for SSH, a login-shell site of the fleet.
#[derive(Clone)]
struct Target {
    transport: Transport,
    /// `None` for the local transport.
    site: Option<ShellSite>,
    fleet: Arc<Fleet>,
}

impl Target {
    fn shell_name(&self) -> &str {
        self.site.as_ref().map_or("sh", |s| s.shell.as_str())
    }

    /// The user commands run as (for `pgrep -u`): the site's user, or whoever runs the test.
    fn user(&self) -> Option<&str> {
        self.site.as_ref().map(|s| s.user.as_str())
    }

    fn site(&self) -> Option<&FleetSite> {
        self.site.as_ref().map(|s| &s.site)
    }

    /// A fresh shell (a new connection for libssh2).
    fn shell(&self) -> Shell {
        let fleet = &self.fleet;
        let shell = match (self.transport, self.site()) {
            (Transport::Local, _) => Shell::local(),
            (Transport::Libssh2 | Transport::Resident, Some(site)) => {
                let mut opts = SshOptions::new(&site.name);
                opts.ssh_config = Some(fleet.ssh_config.clone());
                opts.connect_timeout = Some(Duration::from_secs(20));
                opts.resident_shell = self.transport == Transport::Resident;
                Shell::with_ssh(opts)
            }
            (Transport::Kept, Some(site)) => {
                let mut opts = SshOptions::new(&site.name);
                opts.ssh_config = Some(fleet.ssh_config.clone());
                opts.connect_timeout = Some(Duration::from_secs(20));
                Shell::with_ssh_kept(opts, &common::keeper())
            }
            (Transport::OpenSsh, Some(site)) => {
                // A non-default user and port, given as ssh's own -l and -p.
                let args = [
                    "-F",
                    &fleet.ssh_config.display().to_string(),
                    "-l",
                    fleet.user_of(site),
                    "-p",
                    &site.port.to_string(),
                ]
                .map(String::from)
                .to_vec();
                Shell::external_ssh("ssh", args, &site.addr)
            }
            (_, None) => unreachable!("SSH targets have a site"),
        };
        let agent = PasswordAgent::new(
            "conformance",
            Arc::new(ScriptedPrompter::new(vec![fleet.password.clone(); 20])),
        );
        shell.with_password_agent(Arc::new(agent))
    }

    /// How many of this target's commands matching `pattern` are running.
    fn running(&self, pattern: &str) -> usize {
        let mut cmd = std::process::Command::new("pgrep");
        if let Some(user) = self.user() {
            cmd.args(["-u", user]);
        }
        let out = cmd.args(["-f", pattern]).output().expect("pgrep");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Successful public key logins of this target's user in its sshd's log.
    fn logins(&self) -> usize {
        let Some(site) = self.site() else { return 0 };
        let log = std::fs::read_to_string(self.fleet.log_of(site)).unwrap_or_default();
        let wanted = format!("Accepted publickey for {} ", self.fleet.user_of(site));
        log.lines().filter(|l| l.contains(&wanted)).count()
    }

    /// A scratch path on the target (the same machine: loopback).
    fn remote_dir(&self, name: &str) -> String {
        match self.site.as_ref() {
            Some(s) => format!("/home/{}/conformance-{name}", s.user),
            None => std::env::temp_dir()
                .join(format!(
                    "polyshell-conformance-{}-{name}",
                    std::process::id()
                ))
                .display()
                .to_string(),
        }
    }
}

/// A unique `sleep` a cell can look for with pgrep.
fn unique_sleep(base: u32) -> String {
    format!("sleep {base}.{:06}", rand_u32() % 1_000_000)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u32
}

type Check = Result<String, String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

async fn no_process_left(t: &Target, pattern: &str) -> Result<(), String> {
    polyshell_shell::flush_terminations(Duration::from_secs(15)).await;
    let mut gone = false;
    for _ in 0..100 {
        if t.running(pattern) == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure(gone, || {
        format!("`{pattern}` still running on the site after the cancel")
    })
}

// ---- the behaviours ---------------------------------------------------------------------

async fn exit_status_and_signals(t: &Target) -> Check {
    let shell = t.shell();
    let out = shell.run("exit 3").await.map_err(|e| e.to_string())?;
    ensure(out.status == ExitStatus::Code(3), || {
        format!("exit 3 gave {:?}", out.status)
    })?;
    let out = shell
        .run("kill -TERM $$")
        .await
        .map_err(|e| e.to_string())?;
    match t.transport {
        // ssh(1) reports a command killed by a signal as exit status 255 (documented).
        Transport::OpenSsh => ensure(out.status == ExitStatus::Code(255), || {
            format!("a signalled command gave {:?}, ssh reports 255", out.status)
        })?,
        _ => ensure(out.status == ExitStatus::Signal(15), || {
            format!("kill -TERM $$ gave {:?}", out.status)
        })?,
    }
    Ok("exit 3, SIGTERM".into())
}

async fn stdout_and_stderr_apart(t: &Target) -> Check {
    let out = t
        .shell()
        .run("echo out; echo err >&2; printf 'no newline'")
        .await
        .map_err(|e| e.to_string())?;
    ensure(
        out.stdout_text() == "out\nno newline" && out.stderr_text() == "err\n",
        || {
            format!(
                "stdout {:?}, stderr {:?}",
                out.stdout_text(),
                out.stderr_text()
            )
        },
    )?;
    Ok("kept apart".into())
}

async fn env_and_cwd(t: &Target) -> Check {
    let dir = t.remote_dir("cwd dir");
    let shell = t.shell();
    shell
        .run(Command::new(format!(
            "mkdir -p {}",
            polyshell_shell::quote(&dir)
        )))
        .await
        .map_err(|e| e.to_string())?;
    let cmd = Command::new("printf '%s|%s|%s' \"$A\" \"$B\" \"$(pwd)\"")
        .env("A", "x y'z $HOME \\ \"q\"")
        .env("B", "")
        .cwd(&dir);
    let out = shell.run(cmd).await.map_err(|e| e.to_string())?;
    let expected = format!("x y'z $HOME \\ \"q\"||{dir}");
    ensure(out.stdout_text() == expected, || {
        format!("got {:?}, expected {expected:?}", out.stdout_text())
    })?;
    let missing = shell
        .run(Command::new("true").cwd("/nonexistent/dir"))
        .await
        .map_err(|e| e.to_string())?;
    ensure(!missing.status.success(), || {
        "a missing cwd did not fail the command".into()
    })?;
    Ok("quoted as data".into())
}

const BIG_STDIN: usize = 100 * 1024 * 1024;

async fn large_stdin_with_timeout(t: &Target) -> Check {
    let shell = t.shell();
    // A command that echoes its input: input and output must move at the same time.
    let cmd = Command::new("cat")
        .stdin(vec![b'x'; BIG_STDIN])
        .timeout(Duration::from_secs(120))
        .capture_limit(1024);
    let out = shell.run(cmd).await.map_err(|e| e.to_string())?;
    let echoed = out.stdout.len() as u64 + out.stdout_dropped;
    ensure(echoed == BIG_STDIN as u64, || {
        format!("cat echoed {echoed} of {BIG_STDIN} bytes")
    })?;
    // A command that never reads its input: the timeout covers the input too.
    let sleep = unique_sleep(81);
    let started = std::time::Instant::now();
    let result = shell
        .run(
            Command::new(&sleep)
                .stdin(vec![b'y'; BIG_STDIN])
                .timeout(Duration::from_secs(2)),
        )
        .await;
    ensure(
        matches!(
            result,
            Err(ShellError {
                kind: ErrorKind::Timeout(_),
                ..
            })
        ),
        || format!("expected a timeout, got {result:?}"),
    )?;
    ensure(started.elapsed() < Duration::from_secs(20), || {
        format!("the timeout took {:?}", started.elapsed())
    })?;
    no_process_left(t, &sleep).await?;
    Ok(format!(
        "100 MiB echoed; timeout in {:.1}s",
        started.elapsed().as_secs_f64()
    ))
}

async fn timeout_leaves_no_process(t: &Target) -> Check {
    let sleep = unique_sleep(82);
    let result = t
        .shell()
        .run(Command::new(format!("{sleep}; echo never")).timeout(Duration::from_secs(1)))
        .await;
    ensure(
        matches!(
            result,
            Err(ShellError {
                kind: ErrorKind::Timeout(_),
                ..
            })
        ),
        || format!("expected a timeout, got {result:?}"),
    )?;
    no_process_left(t, &sleep).await?;
    Ok("terminated".into())
}

async fn dropped_future_leaves_no_process(t: &Target) -> Check {
    let shell = t.shell();
    shell.connect().await.map_err(|e| e.to_string())?;
    let sleep = unique_sleep(83);
    let script = format!("echo started; {sleep}");
    let dropped = tokio::time::timeout(Duration::from_millis(1500), shell.run(script.as_str()));
    ensure(dropped.await.is_err(), || {
        "the command ended by itself".into()
    })?;
    no_process_left(t, &sleep).await?;
    Ok("terminated".into())
}

async fn cancel_before_any_output_leaves_no_process(t: &Target) -> Check {
    let shell = t.shell();
    shell.connect().await.map_err(|e| e.to_string())?;
    let mut sleeps = Vec::new();
    // Cancels at every moment of a command's start: before the channel opens, while exec is
    // unanswered, before the pid line, after it.
    for delay_ms in [0u64, 1, 2, 3, 5, 8, 13, 21, 34] {
        let sleep = unique_sleep(84);
        let run = shell.run(sleep.as_str());
        let _ = tokio::time::timeout(Duration::from_millis(delay_ms), run).await;
        sleeps.push(sleep);
    }
    for sleep in &sleeps {
        no_process_left(t, sleep).await?;
    }
    // The connection is still good for the next command (a channel abandoned half-open
    // must not block the ones after it).
    let next = tokio::time::timeout(Duration::from_secs(20), shell.run("echo alive")).await;
    ensure(
        matches!(&next, Ok(Ok(out)) if out.stdout_text() == "alive\n"),
        || format!("the next command on the same connection: {next:?}"),
    )?;
    Ok("9 cancel points, connection still usable".into())
}

async fn sudo_by_marker(t: &Target) -> Check {
    let shell = t.shell();
    let out = shell.run("sudo id -u").await.map_err(|e| e.to_string())?;
    ensure(out.stdout_text() == "0\n", || {
        format!(
            "sudo id -u: {:?} {:?} {:?}",
            out.status,
            out.stdout_text(),
            out.stderr_text()
        )
    })?;
    let out = shell
        .sudo(Command::new("cat; id -u").stdin("fed after the password\n"))
        .await
        .map_err(|e| e.to_string())?;
    ensure(out.stdout_text() == "fed after the password\n0\n", || {
        format!("sudo with stdin: {:?}", out.stdout_text())
    })?;
    ensure(!out.stderr_text().contains("polyshell-sudo"), || {
        "the marker reached the output".into()
    })?;
    // sudo inside a command: each invocation answered, only what follows sudo elevated.
    let me = shell.run("id -u").await.map_err(|e| e.to_string())?;
    let script = "cd / && sudo id -u && id -u && x=$(sudo id -u) && echo \"[$x]\"";
    let out = shell.run(script).await.map_err(|e| e.to_string())?;
    let want = format!("0\n{}[0]\n", me.stdout_text());
    ensure(out.stdout_text() == want && out.status.success(), || {
        format!(
            "{script}: {:?} {:?} {:?} (want {want:?})",
            out.status,
            out.stdout_text(),
            out.stderr_text()
        )
    })?;
    ensure(!out.stderr_text().contains("polyshell-sudo"), || {
        "the inline marker reached the output".into()
    })?;
    Ok("root, marker hidden, inline sudo".into())
}

fn make_tree(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(root.join("sub/data"), vec![7u8; 300_000]).unwrap();
    std::fs::write(root.join("sub/deeper/it's odd"), "quote\n").unwrap();
    std::os::unix::fs::symlink("run.sh", root.join("link")).unwrap();
    for (path, mode) in [
        ("run.sh", 0o751),
        ("sub/data", 0o600),
        ("sub/deeper", 0o750),
        ("sub", 0o711),
        (".", 0o700),
    ] {
        std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Every path under `root` with its mode and content (links as their target).
fn describe_tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(path).unwrap();
        let (mode, content) = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).unwrap();
            (0, target.into_os_string().into_encoded_bytes())
        } else if meta.is_dir() {
            (meta.permissions().mode() & 0o7777, Vec::new())
        } else {
            (
                meta.permissions().mode() & 0o7777,
                std::fs::read(path).unwrap(),
            )
        };
        let rel = path.strip_prefix(root).unwrap();
        out.insert(rel.display().to_string(), (mode, content));
    }
    out
}

async fn transfer_tree_with_modes(t: &Target) -> Check {
    let shell = t.shell();
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    make_tree(&tree);
    let remote = t.remote_dir(&format!("tree-{}", t.transport.name()));
    shell
        .run(format!("rm -rf {}", polyshell_shell::quote(&remote)))
        .await
        .map_err(|e| e.to_string())?;
    // Twice: the rule is the same whether the destination exists or not.
    for round in 0..2 {
        shell
            .upload(&tree, &remote)
            .await
            .map_err(|e| e.to_string())?;
        let back = scratch.path().join(format!("back{round}"));
        shell
            .download(&remote, &back)
            .await
            .map_err(|e| e.to_string())?;
        let (sent, got) = (describe_tree(&tree), describe_tree(&back));
        ensure(sent == got, || {
            let diff: Vec<_> = sent
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k} {:o} vs {:?}",
                        v.0,
                        got.get(k).map(|g| format!("{:o}", g.0))
                    )
                })
                .collect();
            format!("round {round}: the tree came back different: {diff:?}")
        })?;
    }
    // One file, into an existing directory and onto a new name.
    let file = tree.join("run.sh");
    shell
        .upload(&file, &remote)
        .await
        .map_err(|e| e.to_string())?;
    shell
        .upload(&file, &format!("{remote}/renamed"))
        .await
        .map_err(|e| e.to_string())?;
    let out = shell
        .run(format!(
            "cd {} && ls -l run.sh renamed | cut -c1-10",
            polyshell_shell::quote(&remote)
        ))
        .await
        .map_err(|e| e.to_string())?;
    ensure(out.stdout_text() == "-rwxr-x--x\n-rwxr-x--x\n", || {
        format!("single files: {:?}", out.stdout_text())
    })?;
    Ok("tree, top mode, links, files".into())
}

async fn one_connection_for_commands_and_transfers(t: &Target) -> Check {
    let shell = t.shell();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("f"), "x").unwrap();
    let remote = t.remote_dir("one-connection");
    let before = t.logins();
    shell.run("true").await.map_err(|e| e.to_string())?;
    shell
        .upload(scratch.path().join("f"), &remote)
        .await
        .map_err(|e| e.to_string())?;
    shell
        .download(&remote, scratch.path().join("g"))
        .await
        .map_err(|e| e.to_string())?;
    shell.run("true").await.map_err(|e| e.to_string())?;
    // sshd logs the login a moment after the client sees it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logins = t.logins() - before;
    match t.transport {
        Transport::Local => Ok("no connection".into()),
        Transport::Libssh2 | Transport::Resident => {
            ensure(logins == 1, || format!("{logins} logins for 4 operations"))?;
            Ok("1 login for 4 operations".into())
        }
        // The keeper's connection may be there from an earlier behaviour: none then.
        Transport::Kept => {
            ensure(logins <= 1, || format!("{logins} logins for 4 operations"))?;
            Ok(format!("{logins} login for 4 operations"))
        }
        // Documented: the system ssh is one process (one login) per command and transfer,
        // unless the user's ssh_config shares them with ControlMaster.
        Transport::OpenSsh => {
            ensure(logins == 4, || {
                format!("{logins} logins for 4 ssh processes")
            })?;
            Ok("documented: 1 login per ssh".into())
        }
    }
}

/// `Shell::disconnect` while a command runs: the command ends on its connection, and the next
/// command connects again (seen in `SSH_CLIENT`, whose port names the connection).
async fn disconnect_while_a_command_runs(t: &Target) -> Check {
    let shell = t.shell();
    let probe = "echo \"client=${SSH_CLIENT:-none}\"";
    let client = |out: polyshell_shell::Output| -> Result<String, String> {
        ensure(out.status.success(), || {
            format!("the probe gave {:?}: {:?}", out.status, out.stderr_text())
        })?;
        Ok(out.stdout_text().trim().to_owned())
    };
    let first = client(shell.run(probe).await.map_err(|e| e.to_string())?)?;
    let running = {
        let shell = shell.clone();
        let script = format!("sleep 1; {probe}");
        tokio::spawn(async move { shell.run(script).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    shell.disconnect().await;
    let during = running.await.map_err(|e| e.to_string())?;
    let during = client(during.map_err(|e| e.to_string())?)?;
    let after = client(shell.run(probe).await.map_err(|e| e.to_string())?)?;
    match t.transport {
        Transport::Local => Ok("no connection".into()),
        Transport::Libssh2 | Transport::Resident => {
            ensure(during == first && after != first, || {
                format!("before {first:?}, during {during:?}, after {after:?}")
            })?;
            Ok("ends on its connection; the next connects".into())
        }
        // Documented: the keeper keeps the connection (what `--persist` is for).
        Transport::Kept => {
            ensure(during == first && after == first, || {
                format!("before {first:?}, during {during:?}, after {after:?}")
            })?;
            Ok("documented: the keeper keeps it".into())
        }
        Transport::OpenSsh => {
            ensure(during != first && after != during, || {
                format!("before {first:?}, during {during:?}, after {after:?}")
            })?;
            Ok("documented: 1 connection per ssh".into())
        }
    }
}

// ---- the matrix -------------------------------------------------------------------------

/// Counting a user's logins needs that user's other cells to stay away meanwhile: that
/// behaviour holds the lock alone, every other one shares it.
static LOGIN_COUNT: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn run(name: &str, behaviour: Behaviour, t: &Target) -> Check {
    let counts_logins = name == "one_connection_for_commands_and_transfers";
    let _shared;
    let _alone;
    if counts_logins {
        _alone = LOGIN_COUNT.write().await;
    } else {
        _shared = LOGIN_COUNT.read().await;
    }
    match tokio::time::timeout(Duration::from_secs(240), behaviour(t)).await {
        Ok(outcome) => outcome,
        Err(_) => Err("did not finish within 240 s".to_owned()),
    }
}

fn behaviour(name: &str) -> Behaviour {
    BEHAVIOURS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("no behaviour {name}"))
}

type Behaviour = for<'a> fn(&'a Target) -> futures::future::BoxFuture<'a, Check>;

macro_rules! behaviours {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), (|t| Box::pin($name(t))) as Behaviour)),*]
    };
}

const BEHAVIOURS: &[(&str, Behaviour)] = behaviours![
    exit_status_and_signals,
    stdout_and_stderr_apart,
    env_and_cwd,
    large_stdin_with_timeout,
    timeout_leaves_no_process,
    dropped_future_leaves_no_process,
    cancel_before_any_output_leaves_no_process,
    sudo_by_marker,
    transfer_tree_with_modes,
    one_connection_for_commands_and_transfers,
    disconnect_while_a_command_runs,
];

fn targets(fleet: &Arc<Fleet>) -> Vec<Target> {
    let mut all = vec![Target {
        transport: Transport::Local,
        site: None,
        fleet: fleet.clone(),
    }];
    for transport in [
        Transport::Libssh2,
        Transport::Kept,
        Transport::Resident,
        Transport::OpenSsh,
    ] {
        for site in &fleet.shells {
            all.push(Target {
                transport,
                site: Some(site.clone()),
                fleet: fleet.clone(),
            });
        }
    }
    all
}

fn target<'a>(all: &'a [Target], transport: Transport, shell: &str) -> &'a Target {
    all.iter()
        .find(|t| t.transport == transport && t.shell_name() == shell)
        .unwrap_or_else(|| panic!("the fleet has no {shell} site"))
}

/// Where the table goes: `$POLYSHELL_CONFORMANCE_REPORT`, else `target/conformance.txt`.
fn report_path() -> PathBuf {
    std::env::var_os("POLYSHELL_CONFORMANCE_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("conformance.txt")
        })
}

fn table(results: &BTreeMap<(usize, Transport, String), Check>, targets: &[Target]) -> String {
    let columns: Vec<String> = targets
        .iter()
        .map(|t| format!("{}/{}", t.transport.name(), t.shell_name()))
        .collect();
    let width = BEHAVIOURS.iter().map(|(n, _)| n.len()).max().unwrap_or(10);
    let mut out = format!("{:width$} ", "behaviour \\ transport/login shell");
    out = format!("{:width$}", out.trim_end());
    for c in &columns {
        out.push_str(&format!(" | {c}"));
    }
    out.push('\n');
    let (mut passed, mut failed) = (0, 0);
    let mut failures = String::new();
    for (i, (name, _)) in BEHAVIOURS.iter().enumerate() {
        out.push_str(&format!("{name:width$}"));
        for (t, column) in targets.iter().zip(&columns) {
            let cell = match results.get(&(i, t.transport, t.shell_name().to_owned())) {
                Some(Ok(_)) => {
                    passed += 1;
                    "ok"
                }
                Some(Err(why)) => {
                    failed += 1;
                    failures.push_str(&format!("  {name} on {column}: {why}\n"));
                    "FAILED"
                }
                None => {
                    failed += 1;
                    failures.push_str(&format!("  {name} on {column}: did not run\n"));
                    "missing"
                }
            };
            out.push_str(&format!(" | {cell:^w$}", w = column.len()));
        }
        out.push('\n');
    }
    out.push_str(&format!("conformance: {passed} passed, {failed} failed\n"));
    out + &failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn conformance_matrix() {
    let fleet = Arc::new(Fleet::load());
    let all = targets(&fleet);
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    // Each target runs its behaviours in order; a few targets at once (the 100 MiB inputs
    // of every target at once would only measure the machine's memory).
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for t in all.clone() {
        let (results, slots) = (results.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            for (i, (name, behaviour)) in BEHAVIOURS.iter().enumerate() {
                let outcome = run(name, *behaviour, &t).await;
                results
                    .lock()
                    .unwrap()
                    .insert((i, t.transport, t.shell_name().to_owned()), outcome);
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a conformance task panicked");
    }
    let results = results.lock().unwrap();
    let text = table(&results, &all);
    let path = report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, &text).unwrap();
    println!("{text}");
    assert!(
        results.values().all(|r| r.is_ok()) && results.len() == BEHAVIOURS.len() * all.len(),
        "conformance failures:\n{text}"
    );
}

// ---- the cases that broke on real hosts, by name ----------------------------------------

fn fleet_targets() -> Vec<Target> {
    targets(&Arc::new(Fleet::load()))
}

async fn must(name: &str, t: &Target) {
    let what = format!("{name} on {}/{}", t.transport.name(), t.shell_name());
    if let Err(why) = bounded(&what, 300, run(name, behaviour(name), t)).await {
        panic!("{what}: {why}");
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn dash_login_shell_timeout_leaves_no_process() {
    let all = fleet_targets();
    for transport in [Transport::Libssh2, Transport::OpenSsh] {
        must("timeout_leaves_no_process", target(&all, transport, "dash")).await;
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn dash_login_shell_cancel_leaves_no_process() {
    let all = fleet_targets();
    for transport in [Transport::Libssh2, Transport::OpenSsh] {
        let t = target(&all, transport, "dash");
        must("dropped_future_leaves_no_process", t).await;
        must("cancel_before_any_output_leaves_no_process", t).await;
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn large_stdin_with_a_timeout_neither_hangs_nor_leaves_a_process() {
    let all = fleet_targets();
    must(
        "large_stdin_with_timeout",
        target(&all, Transport::Local, "sh"),
    )
    .await;
    must(
        "large_stdin_with_timeout",
        target(&all, Transport::Libssh2, "bash"),
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn openssh_transport_transfers_to_a_site_with_user_and_port() {
    let all = fleet_targets();
    must(
        "transfer_tree_with_modes",
        target(&all, Transport::OpenSsh, "zsh"),
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn transfers_keep_the_top_directory_mode() {
    let all = fleet_targets();
    for (transport, shell) in [
        (Transport::Local, "sh"),
        (Transport::Libssh2, "fish"),
        (Transport::OpenSsh, "busybox"),
    ] {
        must("transfer_tree_with_modes", target(&all, transport, shell)).await;
    }
}

#[tokio::test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn transfers_use_the_site_s_existing_connection() {
    let all = fleet_targets();
    must(
        "one_connection_for_commands_and_transfers",
        target(&all, Transport::Libssh2, "dash"),
    )
    .await;
}
