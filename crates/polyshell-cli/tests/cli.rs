//! The `polyshell` command: subcommands, output modes, exit statuses, Polyfile errors, and
//! (with the fleet) -H ranges, --on roles, chained schedules, sudo and transfers.

use assert_cmd::Command;
use polyshell_tests::Fleet;
use std::path::Path;

fn polyshell(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("polyshell").unwrap();
    cmd.current_dir(dir)
        // Runs are recorded in the build's scratch space, not the developer's home.
        .env(
            "POLYSHELL_RUNS_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/runs"),
        )
        .env_remove("POLYSHELL_SUDO_PASSWORD")
        .env("NO_COLOR", "1");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the run succeeded and printed every one of `lines`; its stdout.
fn succeeded_printing(
    out: &std::process::Output,
    lines: impl IntoIterator<Item = String>,
) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in lines {
        assert!(stdout.contains(&line), "no `{line}` in:\n{stdout}");
    }
    stdout
}

/// Elapsed times vary: `in 0.1s` becomes `in Ns`.
fn normalize(s: &str) -> String {
    s.lines()
        .map(|l| match l.rfind(" in ") {
            Some(i) if l.ends_with('s') && l[i + 4..l.len() - 1].parse::<f64>().is_ok() => {
                format!("{} in Ns", &l[..i])
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn readme_first_command_runs_on_the_local_site() {
    let dir = tempfile::tempdir().unwrap();
    let out = polyshell(dir.path())
        .args(["run", "--", "echo hello from $(hostname)"])
        .output()
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("local | hello from {}\n", host.trim())
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        normalize(&text(&out.stderr)),
        "polyshell: 1 site: 1 ok, 0 failed, 0 skipped in Ns"
    );
}

#[test]
fn exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let failed = polyshell(dir.path())
        .args(["run", "--", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    insta::assert_snapshot!("failed_summary", normalize(&text(&failed.stderr)));
    assert_eq!(
        polyshell(dir.path())
            .args(["frobnicate"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        polyshell(dir.path())
            .args(["run"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn help_shows_examples() {
    let dir = tempfile::tempdir().unwrap();
    let out = polyshell(dir.path()).arg("--help").output().unwrap();
    insta::assert_snapshot!("help", text(&out.stdout));
    let out = polyshell(dir.path())
        .args(["run", "--help"])
        .output()
        .unwrap();
    insta::assert_snapshot!("run_help", text(&out.stdout));
}

#[test]
fn completions_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = polyshell(dir.path())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("polyshell"), "{shell}");
    }
}

const BROKEN: &str = r#"[sites."web[01-03"]
host = "x"

[sites.db]
roles = ["db"]
port = "ssh"

[hosts.nope]

[[jobs.deploy]]
roles = ["app"]
run = "echo {bogus} ${HOME}"
colour = "red"

[[jobs.backup]]
roles = ["db"]
run = "backup {site.target}"

[schedules.release]
jobs = ["deploy", "nojob"]
mode = "sideways"
"#;

#[test]
fn check_reports_every_error_with_its_position_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Polyfile.toml"), BROKEN).unwrap();
    let out = polyshell(dir.path()).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("check_errors", text(&out.stderr));
    let marker = dir.path().join("ran");
    let out = polyshell(dir.path())
        .args([
            "run",
            "--on",
            "all",
            "--",
            &format!("touch {}", marker.display()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !marker.exists(),
        "a run must not start on an invalid Polyfile"
    );
}

const LOCAL_SITES: &str = r#"[sites."node[1-5]"]
roles = ["same"]

[sites.odd]
roles = ["other"]
word = "it's; $(rm -rf /)"

[[jobs.hello]]
roles = ["same", "other"]
run = "echo the same output"

[[jobs.odd]]
roles = ["other"]
run = "printf '%s\n' {site.word}"

[[jobs.stamp]]
roles = ["same"]
steps = [{ run = "echo rev-{name}", set = "rev" }]

[[jobs.use]]
roles = ["same"]
run = "echo got {shared.rev}"

[schedules.chained]
chain = [{ jobs = ["stamp"] }, { jobs = ["use"], mode = "parallel" }]
"#;

fn local_polyfile() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Polyfile.toml"), LOCAL_SITES).unwrap();
    dir
}

#[test]
fn gather_folds_identical_output() {
    let dir = local_polyfile();
    let out = polyshell(dir.path())
        .args(["--output", "gather", "jobs", "hello", "odd"])
        .output()
        .unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("gather", text(&out.stdout));
}

#[test]
fn substituted_values_are_data_not_code() {
    let dir = local_polyfile();
    let out = polyshell(dir.path())
        .args(["jobs", "odd"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "odd | it's; $(rm -rf /)\n");
}

#[test]
fn a_chained_schedule_reads_what_the_first_wrote() {
    let dir = local_polyfile();
    let out = polyshell(dir.path())
        .args(["schedule", "chained"])
        .output()
        .unwrap();
    succeeded_printing(
        &out,
        (1..=5).map(|i| format!("node{i} | got rev-node{i}\n")),
    );
}

#[test]
fn json_output_is_one_event_per_line() {
    let dir = local_polyfile();
    let out = polyshell(dir.path())
        .args([
            "--output",
            "json",
            "run",
            "--on",
            "node[1-2]",
            "--",
            "printf 'a\\nb'; printf '\\377' >&2",
        ])
        .output()
        .unwrap();
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"schedule_started"));
    assert_eq!(kinds.last(), Some(&"summary"));
    let lines: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "output").collect();
    assert_eq!(lines.len(), 6);
    assert!(lines
        .iter()
        .any(|e| e["line"] == "b" && e["newline"] == false));
    assert!(
        lines
            .iter()
            .any(|e| e["stream"] == "stderr" && e["line_base64"] == "/w=="),
        "binary bytes intact"
    );
    assert!(events
        .iter()
        .all(|e| e["event"] != "action_started" || e["id"].as_str().unwrap().contains('-')));
}

#[test]
fn quiet_prints_only_the_summary_and_sites_lists() {
    let dir = local_polyfile();
    let out = polyshell(dir.path())
        .args(["--output", "quiet", "jobs", "hello"])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "");
    assert!(text(&out.stderr).contains("6 sites: 6 ok"));
    let out = polyshell(dir.path())
        .args(["sites", "same"])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).ends_with("5 sites: node[1-5]\n"),
        "{}",
        text(&out.stdout)
    );
    let out = polyshell(dir.path())
        .args(["sites", "show", "odd"])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("roles: odd, other"));
    let out = polyshell(dir.path())
        .args(["run", "--on", "nosuch", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`nosuch` is neither a role nor a site"));
}

fn fleet_cmd(fleet: &Fleet) -> Command {
    let mut cmd = polyshell(&fleet.dir);
    cmd.args(["--ssh-config", &fleet.ssh_config.display().to_string()]);
    cmd
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn hosts_ranges_and_stream_output() {
    let fleet = Fleet::load();
    let out = fleet_cmd(&fleet)
        .args([
            "-H",
            "site[001-005],proxied",
            "run",
            "--",
            "echo $SSH_CONNECTION | cut -d' ' -f3",
        ])
        .output()
        .unwrap();
    let stdout = succeeded_printing(&out, (1..=5).map(|i| format!("site00{i} | 127.77.0.{i}\n")));
    assert!(
        stdout.contains("proxied | 127.78.0.2\n"),
        "aligned prefixes: {stdout}"
    );
}

fn fleet_polyfile(fleet: &Fleet) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[sites."site[011-020]"]
roles = ["web"]
host = "{name}"

[sites."site[021-022]"]
roles = ["db"]
host = "{name}"

[[jobs.whoami]]
roles = ["web"]
sudo = "id -u"
"#;
    let _ = fleet;
    std::fs::write(dir.path().join("Polyfile.toml"), text).unwrap();
    dir
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn on_roles_sudo_from_the_environment_and_transfers() {
    let fleet = Fleet::load();
    let dir = fleet_polyfile(&fleet);
    let mut cmd = fleet_cmd(&fleet);
    cmd.current_dir(dir.path())
        .env("POLYSHELL_SUDO_PASSWORD", &fleet.password);
    let out = cmd
        .args([
            "--output", "gather", "run", "--on", "web", "--sudo", "--", "id -u",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "----- site[011-020] (10)\n0\n");
    assert!(
        !text(&out.stdout).contains(&fleet.password)
            && !text(&out.stderr).contains(&fleet.password)
    );

    // A Polyfile job with a sudo step, db sites untouched.
    let mut cmd = fleet_cmd(&fleet);
    cmd.current_dir(dir.path())
        .env("POLYSHELL_SUDO_PASSWORD", &fleet.password);
    let out = cmd.args(["jobs", "whoami"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 10);

    // Wrong password from a non-interactive source: fails fast, never retried.
    let mut cmd = fleet_cmd(&fleet);
    cmd.current_dir(dir.path())
        .env("POLYSHELL_SUDO_PASSWORD", "wrong");
    let out = cmd
        .args(["run", "--on", "db", "--sudo", "--", "id -u"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("sudo rejected the password"),
        "{}",
        text(&out.stderr)
    );

    // Upload a tree to two sites, download it back (into DST/SITE).
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("tree/sub")).unwrap();
    std::fs::write(src.path().join("tree/sub/f"), "payload").unwrap();
    let out = fleet_cmd(&fleet)
        .current_dir(dir.path())
        .args([
            "upload",
            &src.path().join("tree").display().to_string(),
            "cli-rt",
            "--on",
            "db",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = tempfile::tempdir().unwrap();
    let out = fleet_cmd(&fleet)
        .current_dir(dir.path())
        .args([
            "download",
            "cli-rt",
            &back.path().display().to_string(),
            "--on",
            "db",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for site in ["site021", "site022"] {
        assert_eq!(
            std::fs::read_to_string(back.path().join(site).join("sub/f")).unwrap(),
            "payload"
        );
    }
    fleet_cmd(&fleet)
        .current_dir(dir.path())
        .args(["run", "--on", "db", "--", "rm -rf cli-rt"])
        .assert()
        .success();
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn a_dead_site_fails_alone_with_its_reason() {
    let fleet = Fleet::load();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Polyfile.toml"),
        format!(
            "[sites.good]\nhost = \"site030\"\n[sites.dead]\nhost = \"127.0.0.1\"\nport = {port}\n"
        ),
    )
    .unwrap();
    let out = fleet_cmd(&fleet)
        .current_dir(dir.path())
        .args([
            "--connect-timeout",
            "1",
            "run",
            "--on",
            "all",
            "--",
            "echo fine",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "good | fine\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("1 ok, 1 failed"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "failed  dead: no SSH session with 127.0.0.1:{port} within the connect timeout"
        )),
        "{stderr}"
    );
    drop(silent);
}

#[test]
fn absurd_durations_and_counts_are_usage_errors_that_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    for (args, option) in [
        (&["--timeout", "inf"][..], "--timeout"),
        (&["--timeout", "nan"], "--timeout"),
        (&["--timeout=-3"], "--timeout"),
        (&["--timeout", "0.000000000009"], "--timeout"),
        (&["--connect-timeout", "1e30"], "--connect-timeout"),
        (&["--connect-timeout", "400d"], "--connect-timeout"),
        (&["--fanout", "0"], "--fanout"),
    ] {
        let out = polyshell(dir.path())
            .args(args)
            .args(["run", "--", "true"])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let out = polyshell(dir.path())
        .args(["--timeout", "1m", "--fanout", "2", "run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn durations_in_a_polyfile_follow_the_same_rule_as_argv() {
    // 1e-12 s rounded to no time at all; 1e8 s is three years.
    for (polyfile, key) in [
        ("[sites.a]\ntimeout = 1e-12\n", "`timeout`"),
        ("[sites.a]\nconnect_timeout = 1e8\n", "`connect_timeout`"),
        ("[[jobs.j]]\nrun = \"true\"\ntimeout = 1e-12\n", "`timeout`"),
        ("[[jobs.j]]\nrun = \"true\"\ntimeout = 1e8\n", "`timeout`"),
    ] {
        let dir = polyfile_dir(polyfile);
        let out = polyshell(dir.path()).arg("check").output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{polyfile}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains("at most a year"),
            "{polyfile}: {stderr}"
        );
    }
}

fn polyfile_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Polyfile.toml"), text).unwrap();
    dir
}

#[test]
fn site_keys_env_cwd_and_timeout_are_applied() {
    let dir = polyfile_dir(
        r#"
[sites.box]
env = { GREETING = "hello from the site", OVERRIDDEN = "site" }
cwd = "/usr"
timeout = 1

[[jobs.show]]
roles = ["box"]
env = { OVERRIDDEN = "action" }
run = "echo \"$GREETING|$OVERRIDDEN|$(pwd)\""

[[jobs.slow]]
roles = ["box"]
run = "sleep 5"
"#,
    );
    let out = polyshell(dir.path())
        .args(["jobs", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("box | hello from the site|action|/usr"),
        "{}",
        text(&out.stdout)
    );
    let started = std::time::Instant::now();
    let out = polyshell(dir.path())
        .args(["jobs", "slow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("timed out"), "{said}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

#[test]
fn placeholders_in_env_are_substituted_and_site_names_may_hold_dots() {
    let dir = polyfile_dir(
        r#"
[sites."db.eu.example.org"]
rev = "r42"

[[jobs.show]]
roles = ["db.eu.example.org"]
env = { REV = "{sites.db.eu.example.org.rev}", ME = "{name}" }
run = "echo $REV $ME"
"#,
    );
    let out = polyshell(dir.path()).args(["check"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = polyshell(dir.path())
        .args(["jobs", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("db.eu.example.org | r42 db.eu.example.org"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_mistyped_host_is_warned_about_and_local_sites_are_named() {
    let dir = polyfile_dir(
        r#"
[sites.web1]
hots = "web1.example.com"

[sites.web2]
host = "web2.example.com"
"#,
    );
    let out = polyshell(dir.path()).args(["check"]).output().unwrap();
    assert!(out.status.success());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains("Polyfile.toml:3:1: warning: site `web1`: `hots`")
            && stderr.contains("did you mean `host`?"),
        "{stderr}"
    );
    assert!(
        stdout.contains("sites that run on this machine (no `host`): web1\n"),
        "{stdout}"
    );
    // A run warns too, before anything runs.
    let out = polyshell(dir.path())
        .args(["run", "--on", "web1", "--", "true"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(stderr.contains("did you mean `host`?"), "{stderr}");
}

#[test]
fn a_local_site_s_tilde_is_the_home_directory() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f.txt"), "x").unwrap();
    let out = polyshell(work.path())
        .env("HOME", home.path())
        .args(["upload", "f.txt", "~/dest/f.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(home.path().join("dest/f.txt").exists());
    assert!(
        !work.path().join("~").exists(),
        "a directory named ~ was made"
    );
}

#[test]
fn the_words_after_run_are_the_command_with_or_without_a_double_dash() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["run", "echo", "-n", "hi"][..],
        &["run", "--", "echo", "-n", "hi"],
        &["run", "--on", "local", "echo", "-n", "hi"],
    ] {
        let out = polyshell(dir.path()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("local | hi"),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn known_hosts_off_warns_once_naming_the_sites_at_every_verbosity() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on 127.0.0.x:22 here: the run fails fast, after the warning.
    for verbosity in [&[][..], &["-v"], &["-vv"]] {
        let out = polyshell(dir.path())
            .args(verbosity)
            .args(["--known-hosts", "off", "--connect-timeout", "2"])
            .args(["-H", "127.0.0.[2-3]", "run", "true"])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("--known-hosts off"))
            .collect();
        assert_eq!(warnings.len(), 1, "{verbosity:?}: {stderr}");
        assert!(warnings[0].contains("127.0.0.[2-3]"), "{}", warnings[0]);
    }
}

#[test]
fn a_stalled_reader_of_stdout_does_not_stop_ctrl_c() {
    // `polyshell ... | less`, paused: nobody reads standard output.
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("stall-marker-{}", std::process::id());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .args(["run", &format!("yes {marker}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _unread = child.stdout.take();
    let mut stderr = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut all);
        all
    });
    // Long enough to fill the pipe and the writer's queue.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pid = child.id() as libc::pid_t;
    // Ctrl-C twice: the first stops new work, the second cancels what runs.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe { libc::kill(pid, libc::SIGINT) };
    let sent = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after Ctrl-C twice with stdout stalled");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let ended_in = sent.elapsed();
    let stderr = said.join().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped by Ctrl-C"), "{stderr}");
    assert!(
        ended_in < std::time::Duration::from_secs(2),
        "ended {ended_in:?} after the second Ctrl-C"
    );
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "the command was left running: {}",
        text(&left.stdout)
    );
}

#[test]
fn bash_completes_jobs_schedules_roles_and_sites_of_the_polyfile() {
    let dir = polyfile_dir(
        r#"
[sites."web[01-02]"]
roles = ["web"]

[sites.db1]
roles = ["db"]

[[jobs.deploy]]
roles = ["web"]
run = "true"

[[jobs.dbcheck]]
roles = ["db"]
run = "true"

[schedules.release]
chain = [{ jobs = ["deploy"] }]
"#,
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_polyshell"));
    // The registration script runs `polyshell` from PATH, as an installed one would.
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = r#"
source <(polyshell completions bash)
for line in "polyshell jobs d" "polyshell schedule r" "polyshell run --on web,d" "polyshell jobs deploy --on w"; do
    read -ra COMP_WORDS <<< "$line"
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    _clap_complete_polyshell polyshell "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    echo "$line -> ${COMPREPLY[*]}"
done
"#;
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    for want in [
        "polyshell jobs d -> dbcheck deploy\n",
        "polyshell schedule r -> release\n",
        "polyshell run --on web,d -> web,db web,db1\n",
        "polyshell jobs deploy --on w -> web web01 web02\n",
    ] {
        assert!(
            said.contains(want),
            "missing {want:?} in:\n{said}{}",
            text(&out.stderr)
        );
    }
}

/// `cargo xtask man` renders the man page from the same clap definitions the binary parses.
#[test]
fn the_man_page_documents_every_subcommand_and_global_option() {
    let command = polyshell_cli::cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .unwrap();
    let page = String::from_utf8(page).unwrap();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        assert!(page.contains(sub.get_name()), "{} missing", sub.get_name());
    }
    for long in ["ssh\\-config", "known\\-hosts", "dry\\-run", "no\\-record"] {
        assert!(page.contains(long), "--{long} missing from the man page");
    }
}
