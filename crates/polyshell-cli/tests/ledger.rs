//! The run ledger: every run recorded (also one killed with SIGKILL), `runs`, `runs show`,
//! `rerun [--failed]` on exactly the sites that did not succeed, `--dry-run` running and
//! connecting nowhere, permissions, retention, the output cap, and (with the fleet) no sudo
//! password anywhere under the state directory.

use assert_cmd::Command;
use polyshell_tests::Fleet;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A directory with a Polyfile, and the ledger beside it.
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new(polyfile: &str) -> Place {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Polyfile.toml"), polyfile).unwrap();
        Place { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn runs(&self) -> PathBuf {
        self.path().join("state").join("polyshell").join("runs")
    }

    fn polyshell(&self) -> Command {
        let mut cmd = Command::cargo_bin("polyshell").unwrap();
        cmd.current_dir(self.path())
            .env("XDG_STATE_HOME", self.path().join("state"))
            .env_remove("POLYSHELL_RUNS_DIR")
            .env_remove("POLYSHELL_RUNS_KEEP")
            .env_remove("POLYSHELL_RUNS_MAX_AGE")
            .env_remove("POLYSHELL_RUNS_OUTPUT_CAP")
            .env_remove("POLYSHELL_SUDO_PASSWORD")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Names in the file `name` (one per line), as a set; the file is removed.
    fn take_lines(&self, name: &str) -> BTreeSet<String> {
        let path = self.path().join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines().map(str::to_owned).collect()
    }

    /// The run directories, oldest first.
    fn run_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.runs())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Six local sites; `mark` notes each site it ran on in `ran`, and fails on the sites with a
/// `fail-SITE` file.
const SIX: &str = r#"
[sites."s[1-6]"]
roles = ["app"]

[[jobs.mark]]
roles = ["app"]
run = "echo {name} >> ran; if test -e fail-{name}; then exit 1; fi"
"#;

#[test]
fn rerun_failed_runs_on_exactly_the_failed_sites() {
    let place = Place::new(SIX);
    for site in ["s2", "s5"] {
        std::fs::write(place.path().join(format!("fail-{site}")), "").unwrap();
    }
    let out = place.polyshell().args(["jobs", "mark"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        place.take_lines("ran"),
        set(&["s1", "s2", "s3", "s4", "s5", "s6"])
    );

    let out = place.polyshell().arg("runs").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("jobs mark on s[1-6]")
                && l.split_whitespace().skip(3).take(3).collect::<Vec<_>>() == ["4", "2", "0"]),
        "{listing}"
    );

    let out = place
        .polyshell()
        .args(["rerun", "last", "--failed"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("on 2 sites: s[2,5]"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(place.take_lines("ran"), set(&["s2", "s5"]));

    // Fixed: the rerun of the rerun's failures succeeds, and a rerun of a run where every site
    // succeeded has nothing to do.
    for site in ["s2", "s5"] {
        std::fs::remove_file(place.path().join(format!("fail-{site}"))).unwrap();
    }
    let out = place
        .polyshell()
        .args(["rerun", "last", "--failed"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(place.take_lines("ran"), set(&["s2", "s5"]));
    let out = place
        .polyshell()
        .args(["rerun", "last", "--failed"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nothing to rerun"),
        "{}",
        text(&out.stderr)
    );
    assert!(place.take_lines("ran").is_empty());

    // `rerun ID` without --failed: every site of that run (the first one, by its id).
    let first = place.run_dirs()[0].clone();
    let id = first
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .to_owned();
    let out = place.polyshell().args(["rerun", &id]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(place.take_lines("ran").len(), 6);
}

#[test]
fn a_changed_polyfile_is_said_and_the_current_one_used() {
    let place = Place::new(SIX);
    std::fs::write(place.path().join("fail-s3"), "").unwrap();
    let out = place.polyshell().args(["jobs", "mark"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    place.take_lines("ran");
    // The job now writes elsewhere: the rerun uses the new text.
    let changed = SIX.replace(">> ran", ">> ran-new");
    std::fs::write(place.path().join("Polyfile.toml"), changed).unwrap();
    let out = place
        .polyshell()
        .args(["rerun", "last", "--failed"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Polyfile.toml changed since run"),
        "{stderr}"
    );
    assert_eq!(place.take_lines("ran-new"), set(&["s3"]));
    assert!(place.take_lines("ran").is_empty());
}

#[test]
fn a_run_killed_with_sigkill_leaves_a_record_rerun_can_use() {
    let place = Place::new(
        r#"
[sites."s[1-4]"]
roles = ["app"]

[[jobs.slow]]
roles = ["app"]
run = "echo {name} >> ran; case {name} in s3|s4) sleep 60;; esac"
"#,
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"));
    cmd.current_dir(place.path())
        .env("XDG_STATE_HOME", place.path().join("state"))
        .env_remove("POLYSHELL_RUNS_DIR")
        .args(["jobs", "slow", "--mode", "parallel"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Its own process group, so that the test can kill the run and its sleeps at once.
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    // Wait until s1 and s2 are recorded as finished (and s3, s4 are sleeping).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = place
            .run_dirs()
            .first()
            .and_then(|d| std::fs::read_to_string(d.join("events.jsonl")).ok())
            .unwrap_or_default();
        if events.matches("\"action_finished\"").count() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run never recorded two finished actions:\n{events}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child's process group, which this test made.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
    place.take_lines("ran");

    let dir = &place.run_dirs()[0];
    assert!(!dir.join("summary.json").exists());
    let out = place.polyshell().arg("runs").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains("unfinished") && listing.contains("jobs slow on s[1-4]"),
        "{listing}"
    );
    let out = place
        .polyshell()
        .args(["runs", "show", "last"])
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("did not finish") && text(&out.stderr).contains("s[3-4]"),
        "{}",
        text(&out.stderr)
    );

    // The rerun of the failed: the two that never finished. (Quick now: no sleep for them.)
    let quick = place.path().join("Polyfile.toml");
    let polyfile = std::fs::read_to_string(&quick)
        .unwrap()
        .replace("sleep 60", "true");
    std::fs::write(&quick, polyfile).unwrap();
    let out = place
        .polyshell()
        .args(["rerun", "last", "--failed"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(place.take_lines("ran"), set(&["s3", "s4"]));
}

#[test]
fn dry_run_runs_nothing_and_prints_every_command() {
    let place = Place::new(
        r#"
[sites."web[1-3]"]
roles = ["web"]
dir = "/srv/{name}"

[[jobs.deploy]]
roles = ["web"]
steps = [
  { run = "touch created-by-the-job; echo {site.dir}", set = "out" },
  { sudo = "systemctl restart nginx" },
]

[schedules.release]
jobs = ["deploy"]
fanout = 2
max_failures = 1
"#,
    );
    let out = place
        .polyshell()
        .args(["--dry-run", "schedule", "release"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for expected in [
        "dry run: nothing runs and nothing connects",
        "schedule 1/1 `release`: site-sequential, fanout 2, max_failures 1",
        "action 1 (roles web) on web[1-3] (3 sites)",
        "run on web1: touch created-by-the-job; echo /srv/web1  (stdout kept as shared.out)",
        "run on web3: touch created-by-the-job; echo /srv/web3",
        // Identical for every site: shown once.
        "      sudo: systemctl restart nginx\n",
    ] {
        assert!(shown.contains(expected), "no `{expected}` in:\n{shown}");
    }
    let out = place
        .polyshell()
        .args([
            "run",
            "--on",
            "web[1-2]",
            "--dry-run",
            "--",
            "touch created-by-run",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("run on web[1-2] (2 sites): parallel\n  run: touch created-by-run"),
        "{}",
        text(&out.stdout)
    );
    assert!(!place.path().join("created-by-the-job").exists());
    assert!(!place.path().join("created-by-run").exists());
    assert!(place.run_dirs().is_empty(), "a dry run was recorded");

    // A broken Polyfile is exit 2, as with `check`.
    std::fs::write(place.path().join("Polyfile.toml"), "[jobs.x]\nrun = 1\n").unwrap();
    let out = place
        .polyshell()
        .args(["--dry-run", "schedule", "release"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn records_are_private_whatever_the_umask() {
    let place = Place::new(SIX);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_polyshell"));
    cmd.current_dir(place.path())
        .env("XDG_STATE_HOME", place.path().join("state"))
        .env_remove("POLYSHELL_RUNS_DIR")
        .args(["jobs", "mark"]);
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    assert!(cmd.output().unwrap().status.success());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = place.path().join("state");
    assert_eq!(mode(&state.join("polyshell")), 0o700);
    assert_eq!(mode(&place.runs()), 0o700);
    let dirs = place.run_dirs();
    assert_eq!(dirs.len(), 1);
    assert_eq!(mode(&dirs[0]), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // A runs directory someone loosened is made private again.
    std::fs::set_permissions(place.runs(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(place
        .polyshell()
        .args(["jobs", "mark"])
        .output()
        .unwrap()
        .status
        .success());
    assert_eq!(mode(&place.runs()), 0o700);
}

#[test]
fn retention_keeps_the_newest_and_drops_the_old() {
    let place = Place::new(SIX);
    // A run from 2020, recorded by hand: older than any max age.
    let old = place.runs().join("20200101T000000.000000Z-old001");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("run.json"), r#"{"id": "old001", "what": "run x"}"#).unwrap();
    // Not a run: left alone.
    std::fs::write(place.runs().join("notes.txt"), "mine").unwrap();
    for _ in 0..5 {
        let out = place
            .polyshell()
            .env("POLYSHELL_RUNS_KEEP", "3")
            .args(["jobs", "mark"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let dirs = place.run_dirs();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.contains(&"notes.txt".to_owned()));
    assert!(!names.iter().any(|n| n.ends_with("old001")), "{names:?}");
    let listing = text(&place.polyshell().arg("runs").output().unwrap().stdout);
    assert_eq!(listing.lines().count(), 4, "{listing}");

    // A bad setting is a usage error naming it.
    let out = place
        .polyshell()
        .env("POLYSHELL_RUNS_KEEP", "0")
        .args(["jobs", "mark"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("POLYSHELL_RUNS_KEEP=0"));
    let out = place
        .polyshell()
        .env("POLYSHELL_RUNS_MAX_AGE", "forever")
        .arg("runs")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn output_is_capped_and_the_cap_noted() {
    let place = Place::new(SIX);
    let out = place
        .polyshell()
        .env("POLYSHELL_RUNS_OUTPUT_CAP", "2K")
        .args(["run", "--on", "s1", "--", "seq 1 5000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The operator saw everything.
    assert_eq!(text(&out.stdout).lines().count(), 5000);
    let dir = &place.run_dirs()[0];
    let events = std::fs::metadata(dir.join("events.jsonl")).unwrap().len();
    assert!(events < 64 * 1024, "{events} bytes recorded");
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(summary.contains("output_dropped_bytes"), "{summary}");
    let out = place
        .polyshell()
        .args(["runs", "show", "last"])
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("output past 2048 bytes was not recorded"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).starts_with("s1 | 1\ns1 | 2\n"));
}

#[test]
fn runs_show_prints_a_run_again_in_any_output_mode() {
    let place = Place::new(SIX);
    let out = place
        .polyshell()
        .args(["run", "--on", "app", "--", "echo same"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = place
        .polyshell()
        .args(["--output", "gather", "runs", "show", "last"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "----- s[1-6] (6)\nsame\n");
    assert!(text(&out.stderr).contains("6 sites: 6 ok, 0 failed, 0 skipped"));
    let out = place
        .polyshell()
        .args(["runs", "show", "last", "--output", "json"])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|v| v["event"] == "output").count(), 6);
    assert_eq!(lines.last().unwrap()["event"], "summary");
    assert_eq!(lines.last().unwrap()["ok"], 6);

    // Unknown ids and an empty ledger are clear errors.
    let out = place
        .polyshell()
        .args(["runs", "show", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no run `nosuch`"));
    let out = place
        .polyshell()
        .args(["--no-record", "run", "--on", "s1", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(place.run_dirs().len(), 1, "--no-record recorded");
}

/// A schedule's mode and rails, as operators combine them: `[schedules.s]` lines.
fn rails() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["site-sequential", "sequential", "atomic", "parallel"]),
        prop::option::of(1usize..4),
        prop::option::of(1usize..3),
        any::<bool>(),
    )
        .prop_map(|(mode, fanout, max_failures, break_on_error)| {
            let mut lines = format!(
                "[schedules.s]\njobs = [\"mark\", \"again\"]\nmode = \"{mode}\"\nbreak_on_error = {break_on_error}\n"
            );
            if let Some(n) = fanout {
                lines.push_str(&format!("fanout = {n}\n"));
            }
            if let Some(n) = max_failures {
                lines.push_str(&format!("max_failures = {n}\n"));
            }
            lines
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the mode, fanout, max_failures and break_on_error: `rerun --failed` runs on
    /// exactly the sites that did not succeed (a job failed, or never ran), and on no other.
    #[test]
    fn rerun_failed_is_exactly_the_sites_that_did_not_succeed(
        failing in prop::collection::btree_set(1usize..=6, 0..4),
        rails in rails(),
    ) {
        // Two jobs: a site succeeds when `again` ran on it (after `mark`, which may fail).
        let polyfile = format!(
            "{SIX}\n[[jobs.again]]\nroles = [\"app\"]\nrun = \"echo {{name}} >> succeeded\"\n\n{rails}"
        );
        let place = Place::new(&polyfile);
        for n in &failing {
            std::fs::write(place.path().join(format!("fail-s{n}")), "").unwrap();
        }
        let out = place.polyshell().args(["schedule", "s"]).output().unwrap();
        let code = out.status.code();
        prop_assert!(code != Some(2), "{}", text(&out.stderr));
        let mut succeeded = place.take_lines("succeeded");
        // A site that failed `mark` may still run `again` (site-sequential without
        // break_on_error): it did not succeed all the same.
        for n in &failing {
            succeeded.remove(&format!("s{n}"));
        }
        place.take_lines("ran");
        let all = set(&["s1", "s2", "s3", "s4", "s5", "s6"]);
        let expected: BTreeSet<String> = all.difference(&succeeded).cloned().collect();
        prop_assert_eq!(code == Some(0), expected.is_empty(), "{}", text(&out.stderr));
        // The operator fixes what failed and reruns the rest: it runs there, and only there.
        for n in &failing {
            std::fs::remove_file(place.path().join(format!("fail-s{n}"))).unwrap();
        }
        let out = place.polyshell().args(["rerun", "last", "--failed"]).output().unwrap();
        prop_assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        prop_assert_eq!(place.take_lines("ran"), expected.clone());
        prop_assert_eq!(place.take_lines("succeeded"), expected);
    }
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn dry_run_connects_nowhere_and_a_sudo_password_is_never_recorded() {
    let fleet = Fleet::load();
    let sites: Vec<_> = fleet.sites[..3].to_vec();
    let pattern = sites
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let logs = || -> Vec<String> {
        sites
            .iter()
            .map(|s| std::fs::read_to_string(fleet.log_of(s)).unwrap_or_default())
            .collect()
    };
    let logins_since = |before: &[String]| -> usize {
        // sshd writes its log lines a moment after the client sees the answers.
        std::thread::sleep(Duration::from_millis(500));
        logs()
            .iter()
            .zip(before)
            .map(|(after, before)| {
                after[before.len().min(after.len())..]
                    .lines()
                    .filter(|l| l.contains("Accepted ") || l.contains("Connection from "))
                    .count()
            })
            .sum()
    };
    let place = Place::new("");
    std::fs::remove_file(place.path().join("Polyfile.toml")).unwrap();
    let polyshell = || {
        let mut cmd = place.polyshell();
        cmd.args(["--ssh-config", &fleet.ssh_config.display().to_string()]);
        cmd
    };
    let before = logs();
    let out = polyshell()
        .args([
            "-H",
            &pattern,
            "--dry-run",
            "run",
            "--sudo",
            "--",
            "touch /tmp/dry-run-made-this",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(logins_since(&before), 0, "a dry run connected");
    assert!(place.run_dirs().is_empty());

    // The same without --dry-run connects (the check above can see a connection) and runs
    // sudo with the password; the password is nowhere under the state directory.
    let before = logs();
    let out = polyshell()
        .env("POLYSHELL_SUDO_PASSWORD", &fleet.password)
        .args([
            "-H",
            &pattern,
            "run",
            "--sudo",
            "--",
            "id -u; sudo -k; echo done",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(logins_since(&before) >= sites.len());
    let mut files = 0;
    let mut stack = vec![place.path().join("state")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                let found = bytes
                    .windows(fleet.password.len())
                    .any(|w| w == fleet.password.as_bytes());
                assert!(!found, "the sudo password is in {}", path.display());
            }
        }
    }
    assert!(files >= 3, "no record was written ({files} files)");
    let shown = text(
        &polyshell()
            .args(["runs", "show", "last"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(!shown.contains(&fleet.password));
}
