//! `--persist`: connections kept by a per-user keeper between invocations, against real
//! sshd processes of the tests' own (their logs count logins; they can be killed and
//! restarted). Each test has a keeper directory of its own, and leaves no keeper behind. The
//! last tests are the resident shell without a keeper: a site with several actions in a run.

use polyshell_tests::{count_processes, toml_string, wait_for, Fleet, OwnSshd};
use std::io::Read;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A test's world: its own sshd on `addr`, an ssh_config naming sites `own1`..`ownN` on it,
/// and a keeper directory of its own.
struct World {
    dir: tempfile::TempDir,
    addr: &'static str,
    sshd: Option<OwnSshd>,
}

impl World {
    fn new(fleet: &Fleet, addr: &'static str) -> World {
        World::with_key(fleet, addr, &fleet.identity)
    }

    fn with_key(fleet: &Fleet, addr: &'static str, key: &std::path::Path) -> World {
        World::with(fleet, addr, key, "")
    }

    /// `settings`: sshd_config lines replacing the fleet's for the same keywords.
    fn with(fleet: &Fleet, addr: &'static str, key: &std::path::Path, settings: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let keeper = dir.path().join("keeper");
        std::fs::create_dir(&keeper).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keeper, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            dir.path().join("ssh_config"),
            format!(
                "Host own*\n  HostName {addr}\n  Port 2222\n  User {}\n  IdentityFile {}\n  \
                 IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking accept-new\n",
                fleet.user,
                key.display(),
                dir.path().join("known_hosts").display()
            ),
        )
        .unwrap();
        World {
            sshd: Some(OwnSshd::start_with(fleet, addr, settings)),
            dir,
            addr,
        }
    }

    fn sshd(&self) -> &OwnSshd {
        self.sshd.as_ref().unwrap()
    }

    /// Session channels opened on the sshd so far (at LogLevel VERBOSE it logs each one's
    /// command).
    fn sessions(&self) -> usize {
        std::fs::read_to_string(&self.sshd().log)
            .unwrap_or_default()
            .matches("Starting session: command")
            .count()
    }

    fn keeper_dir(&self) -> PathBuf {
        self.dir.path().join("keeper")
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"));
        cmd.current_dir(self.dir.path())
            .env("POLYSHELL_KEEPER_DIR", self.keeper_dir())
            .env_remove("POLYSHELL_PERSIST")
            .env_remove("SSH_AUTH_SOCK")
            .env("NO_COLOR", "1")
            .arg("--no-record")
            .arg("--ssh-config")
            .arg(self.dir.path().join("ssh_config"));
        cmd
    }

    fn polyshell(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// The running keeper's pid, from its lock file.
    fn keeper_pid(&self) -> Option<i32> {
        let pid = std::fs::read_to_string(self.keeper_dir().join("keeper.lock")).ok()?;
        let pid: i32 = pid.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// Kills the sshd and everything under it, and starts a new one on the same address.
    fn restart_sshd(&mut self, fleet: &Fleet) {
        drop(self.sshd.take());
        self.sshd = Some(OwnSshd::start(fleet, self.addr));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Whatever the test's outcome, no keeper outlives it.
        if let Some(pid) = self.keeper_pid() {
            // SAFETY: the keeper this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rfind(')')
            .is_some_and(|i| stat[i + 2..].starts_with('Z')),
        Err(_) => false,
    }
}

fn assert_ok(out: &Output, sites: usize) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let plural = if sites == 1 { "" } else { "s" };
    let summary = format!("{sites} site{plural}: {sites} ok, 0 failed");
    assert!(
        text(&out.stderr).contains(&summary),
        "expected `{summary}`: {}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_second_run_logs_in_nowhere_and_close_leaves_no_keeper() {
    let fleet = Fleet::load();
    let world = World::new(&fleet, "127.79.1.1");
    let first = world
        .command()
        .env("POLYSHELL_SUDO_PASSWORD", "not-for-the-keeper-6ac1")
        .args(["--persist", "5m", "-H", "own[1-6]", "run", "--", "echo one"])
        .output()
        .unwrap();
    assert_ok(&first, 6);
    assert!(
        text(&first.stdout).contains("own3 | one"),
        "{}",
        text(&first.stdout)
    );
    assert!(
        wait_for(5, || world.sshd().logins() == 6),
        "six sites, six logins: {}",
        world.sshd().logins()
    );
    let keeper = world.keeper_pid().expect("the first run started a keeper");
    // The keeper does not inherit its first client's secrets.
    let environ = std::fs::read(format!("/proc/{keeper}/environ")).unwrap();
    assert!(
        !text(&environ).contains("not-for-the-keeper"),
        "the sudo password variable reached the keeper"
    );
    assert!(text(&environ).contains("POLYSHELL_KEEPER_SERVE="));

    let second = world.polyshell(&["--persist", "5m", "-H", "own[1-6]", "run", "--", "echo two"]);
    assert_ok(&second, 6);
    assert!(
        text(&second.stdout).contains("own5 | two"),
        "{}",
        text(&second.stdout)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(world.sshd().logins(), 6, "the second run logged in again");
    assert_eq!(
        world.keeper_pid(),
        Some(keeper),
        "one keeper serves both runs"
    );

    // Without --persist nothing is kept and the keeper is not used.
    let direct = world.polyshell(&["-H", "own1", "run", "--", "true"]);
    assert_ok(&direct, 1);
    assert!(wait_for(5, || world.sshd().logins() == 7));

    let list = world.polyshell(&["connections"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list.stderr));
    let listing = text(&list.stdout);
    assert!(listing.starts_with("SITE"), "{listing}");
    for site in 1..=6 {
        assert!(listing.contains(&format!("own{site} ")), "{listing}");
    }
    assert!(
        listing.contains(&format!("{}@{}:2222", fleet.user, world.addr)),
        "{listing}"
    );
    assert!(listing.contains("5m00s"), "kept for 5 minutes: {listing}");

    let some = world.polyshell(&["connections", "close", "own[1-2]"]);
    assert_eq!(text(&some.stdout), "closed 2 kept connections\n");
    let listing = text(&world.polyshell(&["connections"]).stdout);
    assert!(
        !listing.contains("own1 ") && listing.contains("own3 "),
        "{listing}"
    );

    let all = world.polyshell(&["connections", "close"]);
    assert_eq!(text(&all.stdout), "closed 4 kept connections\n");
    assert!(
        wait_for(5, || !alive(keeper)),
        "the keeper still runs after `connections close`"
    );
    assert!(!world.keeper_dir().join("keeper.sock").exists());
    let none = world.polyshell(&["connections"]);
    assert_eq!(none.status.code(), Some(0));
    assert!(text(&none.stdout).starts_with("no connections are kept"));
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_connection_whose_sshd_restarted_is_replaced_and_the_run_stays_green() {
    let fleet = Fleet::load();
    let mut world = World::new(&fleet, "127.79.1.2");
    assert_ok(
        &world.polyshell(&["--persist", "5m", "-H", "own[1-4]", "run", "--", "true"]),
        4,
    );
    // The server goes away under the kept connections (a reboot, `fleet down`/`up`).
    world.restart_sshd(&fleet);
    let after = world.polyshell(&[
        "--persist",
        "5m",
        "-H",
        "own[1-4]",
        "run",
        "--",
        "echo back",
    ]);
    assert_ok(&after, 4);
    assert!(text(&after.stdout).contains("own2 | back"));
    assert!(
        wait_for(5, || world.sshd().logins() == 4),
        "replaced once each"
    );
    // And the replacements are kept in turn.
    assert_ok(
        &world.polyshell(&["--persist", "5m", "-H", "own[1-4]", "run", "--", "true"]),
        4,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(world.sshd().logins(), 4);

    // Frozen, then gone without a word (SIGSTOP, then SIGKILL: the kernel still closes the
    // sockets): the keeper notices on its own.
    world.sshd().signal_all(libc::SIGSTOP);
    world.restart_sshd(&fleet);
    assert_ok(
        &world.polyshell(&["--persist", "5m", "-H", "own[1-4]", "run", "--", "true"]),
        4,
    );
    // Once more, with a command on a session of its own (`nohup`) that reads its input: if it
    // is started again on a new connection, its input's end goes there too.
    world.restart_sshd(&fleet);
    let reads = world.polyshell(&[
        "--persist",
        "5m",
        "--timeout",
        "20",
        "-H",
        "own[1-4]",
        "run",
        "--",
        "read x || echo input-ended; nohup true >/dev/null 2>&1",
    ]);
    assert_ok(&reads, 4);
    assert!(
        text(&reads.stdout).contains("own3 | input-ended"),
        "{}",
        text(&reads.stdout)
    );
    assert_eq!(
        world.polyshell(&["connections", "close"]).status.code(),
        Some(0)
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn two_concurrent_invocations_share_one_keeper_and_one_connection_per_site() {
    let fleet = Fleet::load();
    let world = World::new(&fleet, "127.79.1.3");
    let start = |word: &str| {
        world
            .command()
            .args(["--persist", "5m", "-H", "own[1-8]", "run", "--"])
            .arg(format!("sleep 0.3; echo {word}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both start with no keeper running: one keeper wins, the other invocation uses it.
    let (a, b) = (start("alpha"), start("beta"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_ok(&a, 8);
    assert_ok(&b, 8);
    assert!(text(&a.stdout).contains("own8 | alpha") && !text(&a.stdout).contains("beta"));
    assert!(text(&b.stdout).contains("own8 | beta") && !text(&b.stdout).contains("alpha"));
    // One keeper, one connection per site however many invocations ask for it at once.
    assert!(
        wait_for(5, || world.sshd().logins() == 8),
        "8 sites, 8 logins: {}",
        world.sshd().logins()
    );
    let logins = 8;
    // Now both run on kept connections at once.
    let (a, b) = (start("gamma"), start("delta"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_ok(&a, 8);
    assert_ok(&b, 8);
    assert!(text(&b.stdout).contains("own1 | delta"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(world.sshd().logins(), logins, "no new login");
    let listing = text(&world.polyshell(&["connections"]).stdout);
    assert_eq!(
        listing.lines().count(),
        1 + 8,
        "one kept connection per site: {listing}"
    );
    assert_eq!(
        world.polyshell(&["connections", "close"]).status.code(),
        Some(0)
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn timeout_ctrl_c_and_a_killed_client_end_the_remote_commands_of_kept_connections() {
    let fleet = Fleet::load();
    let world = World::new(&fleet, "127.79.1.4");
    // --timeout
    let out = world.polyshell(&[
        "--persist",
        "5m",
        "--timeout",
        "1",
        "-H",
        "own[1-3]",
        "run",
        "--",
        "sleep 30.53",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("timed out after 1s"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        wait_for(5, || count_processes("[s]leep 30.53") == 0),
        "a timed-out command survived on a kept connection"
    );
    // Ctrl-C (twice: stop, then cancel the running commands)
    let mut child = sleeping_on_three_sites(&world, "60.73");
    let pid = child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(pid, libc::SIGINT) };
    assert!(wait_for(20, || matches!(child.try_wait(), Ok(Some(_)))));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{stderr}");
    assert!(
        wait_for(10, || count_processes("[s]leep 60.73") == 0),
        "remote commands survived Ctrl-C on kept connections"
    );
    // A client killed outright (SIGKILL: no clean-up of its own): the keeper ends its commands.
    let mut child = sleeping_on_three_sites(&world, "60.74");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(10, || count_processes("[s]leep 60.74") == 0),
        "the keeper left a killed client's commands running"
    );
    // The connections survived all of it, still kept: no new login.
    let logins = world.sshd().logins();
    assert_ok(
        &world.polyshell(&["--persist", "5m", "-H", "own[1-3]", "run", "--", "true"]),
        3,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(world.sshd().logins(), logins);
    assert_eq!(
        world.polyshell(&["connections", "close"]).status.code(),
        Some(0)
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_keeper_refuses_another_user_and_a_directory_open_to_others() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A keeper run by the fleet's user, in a directory of that user's.
    let uid = uid_of(&fleet.user);
    let keeper_dir = dir.path().join("keeper");
    std::fs::create_dir(&keeper_dir).unwrap();
    std::fs::set_permissions(&keeper_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&keeper_dir, Some(uid), None).unwrap();
    let mut keeper = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
            .env("POLYSHELL_KEEPER_SERVE", &keeper_dir)
            .current_dir("/")
            .uid(uid)
            .spawn()
            .unwrap()
    };
    let socket = keeper_dir.join("keeper.sock");
    assert!(
        wait_for(10, || socket.exists()),
        "the other user's keeper did not start"
    );
    // This test runs as another user (root can enter the directory): refused by uid.
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        text(&answer).contains("serves only the user that runs it"),
        "{:?}",
        text(&answer)
    );
    // And through polyshell: it will not even use a directory that is another user's.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .env("POLYSHELL_KEEPER_DIR", &keeper_dir)
        .args(["connections"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("belongs to uid"),
        "{}",
        text(&out.stderr)
    );
    // Nor one open to others.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .env("POLYSHELL_KEEPER_DIR", &open)
        .args(["--persist", "1m", "-H", "own1", "run", "--", "true"])
        .env("POLYSHELL_SSH_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("is open to other users"),
        "{}",
        text(&out.stderr)
    );
    keeper.kill().unwrap();
    keeper.wait().unwrap();
}

/// A `--persist` run of `sleep SECS` on own1..own3, once the three sleeps run.
fn sleeping_on_three_sites(world: &World, secs: &str) -> std::process::Child {
    let child = world
        .command()
        .args(["--persist", "5m", "-H", "own[1-3]", "run", "--"])
        .arg(format!("sleep {secs}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pattern = format!("[s]leep {secs}");
    assert!(
        wait_for(20, || count_processes(&pattern) >= 3),
        "the three `sleep {secs}` did not start"
    );
    child
}

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .unwrap();
    text(&out.stdout).trim().parse().unwrap()
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_key_that_needs_its_passphrase_typed_is_asked_here_and_its_sites_are_not_kept() {
    let fleet = Fleet::load();
    let world = World::with_key(&fleet, "127.79.1.5", &fleet.locked_identity);
    let calls = world.dir.path().join("askpass-calls");
    let askpass = world.dir.path().join("askpass");
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\necho '{}'\n",
            calls.display(),
            fleet.key_passphrase
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = {
        use std::os::unix::process::CommandExt;
        let mut cmd = world.command();
        cmd.args(["--persist", "5m", "-H", "own[1-3]", "run", "--", "echo up"])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .stdin(std::process::Stdio::null());
        // SAFETY: setsid only; no terminal, as askpass expects.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    assert_ok(&out, 3);
    assert_eq!(text(&out.stdout).matches("| up").count(), 3);
    let asked = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        asked.lines().count(),
        1,
        "asked once, by polyshell: {asked}"
    );
    // The keeper asked nobody and keeps nothing it could not open itself.
    let listing = text(&world.polyshell(&["connections"]).stdout);
    assert!(listing.starts_with("no connections are kept"), "{listing}");
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn persist_comes_from_the_environment_and_the_polyfile_and_zero_keeps_nothing() {
    let fleet = Fleet::load();
    let world = World::new(&fleet, "127.79.1.6");
    let kept = || {
        let listing = text(&world.polyshell(&["connections"]).stdout);
        listing.lines().filter(|l| l.starts_with("own")).count()
    };
    // POLYSHELL_PERSIST
    let out = world
        .command()
        .env("POLYSHELL_PERSIST", "2m")
        .args(["-H", "own[1-2]", "run", "--", "true"])
        .output()
        .unwrap();
    assert_ok(&out, 2);
    assert_eq!(kept(), 2);
    assert!(text(&world.polyshell(&["connections"]).stdout).contains("2m00s"));
    // A Polyfile's [settings]; the command line's 0 wins over it and keeps nothing new.
    std::fs::write(
        world.dir.path().join("Polyfile.toml"),
        "[settings]\npersist = \"3m\"\n[sites.own3]\nhost = \"own3\"\n[sites.own4]\nhost = \"own4\"\n",
    )
    .unwrap();
    assert_ok(
        &world.polyshell(&["--persist", "0", "run", "--on", "own4", "--", "true"]),
        1,
    );
    assert_eq!(kept(), 2, "--persist 0 kept a connection");
    assert_ok(&world.polyshell(&["run", "--on", "own3", "--", "true"]), 1);
    assert_eq!(kept(), 3);
    assert!(text(&world.polyshell(&["connections"]).stdout).contains("3m00s"));
    // A bad value is a usage error naming where it came from.
    let bad = world
        .command()
        .env("POLYSHELL_PERSIST", "soon")
        .args(["-H", "own1", "run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("POLYSHELL_PERSIST"),
        "{}",
        text(&bad.stderr)
    );
    assert_eq!(
        world.polyshell(&["connections", "close"]).status.code(),
        Some(0)
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn plain_commands_share_one_resident_shell_and_the_others_get_sessions_of_their_own() {
    let fleet = Fleet::load();
    let world = World::new(&fleet, "127.79.1.7");
    let sessions = || world.sessions();
    let run = |args: &[&str]| {
        let mut all = vec!["--persist", "5m", "-H", "own[1-2]"];
        all.extend_from_slice(args);
        world.polyshell(&all)
    };
    let first = run(&["run", "--", "echo $$"]);
    assert_ok(&first, 2);
    assert!(wait_for(5, || sessions() == 2), "sessions: {}", sessions());
    // Plain commands (no input, nothing in the background): no new session, the same `$$`,
    // and streams, exit codes, environment and directory as on a session of their own.
    let again = run(&["run", "--", "echo $$"]);
    assert_ok(&again, 2);
    let lines = |out: &Output| {
        let mut l: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        l.sort();
        l
    };
    assert_eq!(lines(&first), lines(&again), "one shell per connection");
    let out = run(&[
        "run",
        "--",
        "cd /tmp && export X=1 && echo \"out $X $(pwd) $0 $#\"; echo err >&2; printf tail; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("own1 | out 1 /tmp /bin/sh 0"), "{stdout}");
    assert!(stdout.contains("own2 | tail"), "{stdout}");
    assert!(
        text(&out.stderr).contains("own1 ! err"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("exit code 3"),
        "{}",
        text(&out.stderr)
    );
    // What a command did to its shell ended with it.
    let after = run(&["run", "--", "echo \"[$X]\" \"$(pwd)\""]);
    assert_ok(&after, 2);
    assert!(
        !text(&after.stdout).contains("[1]") && !text(&after.stdout).contains("/tmp"),
        "{}",
        text(&after.stdout)
    );
    // Output in many pieces passes whole, and the tags that end it never show.
    let many = run(&["run", "--", "seq 200000"]);
    assert_ok(&many, 2);
    let stdout = text(&many.stdout);
    assert_eq!(stdout.lines().count(), 400_000, "lines lost or added");
    assert!(stdout.contains("own2 | 200000\n") && !stdout.contains("polyshell-run"));
    assert_eq!(sessions(), 2, "plain commands opened sessions");

    // Something in the background: a session of its own, and its output stays its own.
    let bg = run(&["run", "--", "(sleep 0.5; echo late) & echo now"]);
    assert_ok(&bg, 2);
    assert!(
        text(&bg.stdout).contains("own1 | late"),
        "{}",
        text(&bg.stdout)
    );
    assert!(wait_for(5, || sessions() == 4), "sessions: {}", sessions());

    // A cancelled plain command ends with its shell; the next plain command starts another.
    let out = run(&["--timeout", "1", "run", "--", "sleep 31.17; echo never"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        wait_for(5, || count_processes("[s]leep 31.17") == 0),
        "a timed-out command survived in the resident shell"
    );
    let next = run(&["run", "--", "echo $$"]);
    assert_ok(&next, 2);
    assert_ne!(
        lines(&next),
        lines(&first),
        "the cancelled command's shell is gone"
    );
    // 4, and per site the kill's session and the new shell's.
    assert!(wait_for(5, || sessions() == 8), "sessions: {}", sessions());
    assert_eq!(world.sshd().logins(), 2, "one login per site throughout");
    assert_eq!(
        world.polyshell(&["connections", "close"]).status.code(),
        Some(0)
    );
    // Closed, the connections take their shells with them: only the listener is left.
    assert!(
        wait_for(5, || world.sshd().tree().len() == 1),
        "processes left under the site's sshd: {:?}",
        world.sshd().tree()
    );
    assert_eq!(sessions(), 8, "closing ran something on the sites");
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_server_allowing_one_session_runs_plain_and_other_commands_in_turn() {
    let fleet = Fleet::load();
    let world = World::with(&fleet, "127.79.1.8", &fleet.identity, "MaxSessions 1");
    let run =
        |script: &str| world.polyshell(&["--persist", "5m", "-H", "own1", "run", "--", script]);
    // The resident shell holds the one session; a command needing its own closes it first.
    for script in [
        "echo plain",
        "echo background & wait",
        "echo plain again",
        "echo bg & wait",
    ] {
        let out = run(script);
        assert_ok(&out, 1);
        let word = script.split(' ').nth(1).unwrap();
        assert!(
            text(&out.stdout).contains(word),
            "{script}: {}",
            text(&out.stdout)
        );
    }
    assert_eq!(world.sshd().logins(), 1);
    assert_eq!(
        world.polyshell(&["connections", "close"]).status.code(),
        Some(0)
    );
}

// ---- without --persist: a site with more than one action -------------------------------

/// A Polyfile for sites `own1` and `own2`, with one job per script, run in order as
/// schedule `all`.
fn polyfile(world: &World, scripts: &[&str]) -> String {
    let mut text = String::from("[sites.\"own[1-2]\"]\nroles = [\"o\"]\nhost = \"{name}\"\n\n");
    let mut names = Vec::new();
    for (i, script) in scripts.iter().enumerate() {
        let name = format!("j{i}");
        text.push_str(&format!(
            "[[jobs.{name}]]\nroles = [\"o\"]\nrun = {}\n",
            toml_string(script)
        ));
        names.push(format!("\"{name}\""));
    }
    text.push_str(&format!(
        "\n[schedules.all]\njobs = [{}]\n",
        names.join(", ")
    ));
    let path = world.dir.path().join("Polyfile.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_site_with_several_actions_runs_its_plain_ones_in_one_resident_shell() {
    let fleet = Fleet::load();
    let world = World::new(&fleet, "127.79.1.9");
    let sessions = || world.sessions();
    let file = polyfile(
        &world,
        &[
            "echo \"a $$\"",
            "cd /tmp && export X=1 && echo \"out $X $(pwd) $0 $#\"; echo err >&2; printf tail; exit 3",
            "echo \"b [$X] $(pwd) $$\"",
            "(sleep 0.3; echo late) & echo now",
            "seq 50000",
            "echo \"c $$\"",
        ],
    );
    let out = world.polyshell(&["-f", &file, "schedule", "all"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for site in ["own1", "own2"] {
        let mine: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{site} | ")))
            .collect();
        let pid = |tag: &str| {
            let line = mine.iter().find(|l| l.starts_with(tag)).unwrap_or_else(|| {
                panic!("{site}: no `{tag}` line in {stdout}");
            });
            line.rsplit(' ').next().unwrap().to_owned()
        };
        // One shell for the plain commands: the same `$$`; what one did to it ended with it.
        assert_eq!(pid("a "), pid("c "), "{site}: {stdout}");
        assert!(mine.contains(&"out 1 /tmp /bin/sh 0"), "{stdout}");
        assert!(mine.contains(&"tail"), "{stdout}");
        assert!(
            mine.iter()
                .any(|l| l.starts_with("b [] ") && !l.contains("/tmp")),
            "{stdout}"
        );
        assert!(mine.contains(&"late") && mine.contains(&"now"), "{stdout}");
        assert!(mine.contains(&"50000"), "{stdout}");
        assert!(stderr.contains(&format!("{site} ! err")), "{stderr}");
    }
    assert_eq!(stdout.lines().count(), 2 * (50_000 + 7), "{stderr}");
    assert!(!stdout.contains("polyshell-run") && !stderr.contains("polyshell-run"));
    assert!(stderr.contains("exit code 3"), "{stderr}");
    // Per site: the resident shell's session and the background job's.
    assert!(wait_for(5, || sessions() == 4), "sessions: {}", sessions());
    assert_eq!(world.sshd().logins(), 2, "one login per site");
    // The run over, its shells are gone: only the listener is left.
    assert!(
        wait_for(5, || world.sshd().tree().len() == 1),
        "processes left under the site's sshd: {:?}",
        world.sshd().tree()
    );

    // One action per site: a session of its own, as without the resident shell.
    let before = sessions();
    let one = world.polyshell(&["-H", "own[1-2]", "run", "--", "echo $$"]);
    assert_ok(&one, 2);
    assert!(
        wait_for(5, || sessions() == before + 2),
        "sessions: {}",
        sessions()
    );

    // A cancelled plain command ends with its shell, and leaves nothing running.
    let file = polyfile(&world, &["echo \"a $$\"", "sleep 32.17; echo never"]);
    let out = world.polyshell(&["--timeout", "1", "-f", &file, "schedule", "all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        wait_for(5, || count_processes("[s]leep 32.17") == 0),
        "a timed-out command survived in the resident shell"
    );
    assert!(
        wait_for(5, || world.sshd().tree().len() == 1),
        "processes left under the site's sshd: {:?}",
        world.sshd().tree()
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_server_allowing_one_session_runs_a_schedule_mixing_plain_background_and_sudo_commands() {
    let fleet = Fleet::load();
    let world = World::with(&fleet, "127.79.1.10", &fleet.identity, "MaxSessions 1");
    let file = polyfile(
        &world,
        &[
            "echo plain",
            "echo background & wait",
            "echo again",
            "sudo id -u",
            "echo last",
        ],
    );
    let out = world
        .command()
        .env("POLYSHELL_SUDO_PASSWORD", &fleet.password)
        .args(["-f", &file, "schedule", "all"])
        .output()
        .unwrap();
    assert_ok(&out, 2);
    let stdout = text(&out.stdout);
    for site in ["own1", "own2"] {
        for word in ["plain", "background", "again", "0", "last"] {
            assert!(
                stdout.contains(&format!("{site} | {word}\n")),
                "{site}: no {word}: {stdout}"
            );
        }
    }
    assert!(!stdout.contains(&fleet.password));
    assert_eq!(world.sshd().logins(), 2, "one login per site");
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_server_allowing_one_session_runs_parallel_jobs_beside_an_idle_resident_shell() {
    let fleet = Fleet::load();
    let world = World::with(&fleet, "127.79.1.11", &fleet.identity, "MaxSessions 1");
    // Both jobs of the first step start at once on each site: the plain one on the resident
    // shell, `sudo` on a session of its own, which the server refuses while the resident
    // shell holds the one it allows. Once the plain job is done, the idle resident shell
    // gives its session back, and the refused one, asked again, runs.
    let text_of = "[sites.\"own[1-2]\"]\nroles = [\"o\"]\nhost = \"{name}\"\n\n\
         [[jobs.plain]]\nroles = [\"o\"]\nrun = \"echo plain\"\n\
         [[jobs.root]]\nroles = [\"o\"]\nrun = \"sudo id -u\"\n\
         [[jobs.after]]\nroles = [\"o\"]\nrun = \"echo after\"\n\n\
         [schedules.all]\nchain = [{ jobs = [\"plain\", \"root\"], mode = \"parallel\" }, \
         { jobs = [\"after\"], mode = \"parallel\" }]\n";
    let file = world.dir.path().join("Polyfile.toml");
    std::fs::write(&file, text_of).unwrap();
    // The order the two opens reach the server in varies: a few runs meet both.
    for _ in 0..4 {
        let out = world
            .command()
            .env("POLYSHELL_SUDO_PASSWORD", &fleet.password)
            .args(["-f", &file.display().to_string(), "schedule", "all"])
            .output()
            .unwrap();
        assert_ok(&out, 2);
        let stdout = text(&out.stdout);
        for site in ["own1", "own2"] {
            for word in ["plain", "0", "after"] {
                assert!(
                    stdout.contains(&format!("{site} | {word}\n")),
                    "{site}: no {word}: {stdout}"
                );
            }
        }
        assert!(!stdout.contains(&fleet.password));
    }
}
