//! Locks of the Polyfile, checked from the start and end times the commands themselves
//! record: a per-`dc` lock, `limit = 2`, one lock across two jobs and two chain entries,
//! locks combined with modes, fanout and max_failures (a property test), cancellation while
//! waiting, `check`'s errors, lock-wait events and the summary, and a custom lock kind
//! registered by a program (`examples/rack_lock.rs`).

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory holding `polyfile`.
fn place(polyfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Polyfile.toml"), polyfile).unwrap();
    dir
}

fn command(program: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env("POLYSHELL_RUNS_DIR", dir.join("runs"));
    cmd
}

fn polyshell(dir: &Path, args: &[&str]) -> Output {
    command(Path::new(env!("CARGO_BIN_EXE_polyshell")), dir, args)
        .output()
        .unwrap()
}

/// A step that records when it ran: `SITE JOB start|end NANOS` lines in `log`.
fn timed(job: &str, seconds: &str) -> String {
    format!(
        "echo {{name}} {job} start $(date +%s%N) >> log; sleep {seconds}; echo {{name}} {job} end $(date +%s%N) >> log"
    )
}

/// One command's run: site, job, start and end (ns).
#[derive(Debug, Clone)]
struct Span {
    site: String,
    job: String,
    start: u128,
    end: u128,
}

fn spans(dir: &Path) -> Vec<Span> {
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let mut open: BTreeMap<(String, String), u128> = BTreeMap::new();
    let mut spans = Vec::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [site, job, what, at] = parts[..] else {
            panic!("a bad log line: {line:?}");
        };
        let at: u128 = at.parse().unwrap();
        let key = (site.to_owned(), job.to_owned());
        match what {
            "start" => {
                open.insert(key, at);
            }
            _ => spans.push(Span {
                site: key.0.clone(),
                job: key.1.clone(),
                start: open.remove(&key).expect("an end without a start"),
                end: at,
            }),
        }
    }
    assert!(open.is_empty(), "commands that never ended: {open:?}");
    spans
}

fn overlap(a: &Span, b: &Span) -> bool {
    a.start < b.end && b.start < a.end
}

/// No two spans of one group (`group` of the site) overlap, and some of different groups do.
fn apart_within_and_together_across<G: PartialEq>(
    spans: &[Span],
    group: impl Fn(&str) -> G,
    what: &str,
) {
    let mut across = 0;
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if group(&a.site) == group(&b.site) {
                assert!(
                    !overlap(a, b),
                    "{} and {} of one {what} overlapped",
                    a.site,
                    b.site
                );
            } else if overlap(a, b) {
                across += 1;
            }
        }
    }
    assert!(
        across > 0,
        "no two {what}s ever ran side by side: {spans:?}"
    );
}

/// The most spans running at one moment.
fn most_at_once(spans: &[Span]) -> usize {
    let mut edges: Vec<(u128, i32)> = spans
        .iter()
        .flat_map(|s| [(s.start, 1), (s.end, -1)])
        .collect();
    // An end before a start at the same instant.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn a_per_dc_lock_never_overlaps_one_dc_while_dcs_overlap() {
    let dir = place(&format!(
        r#"
[sites."s[1-2]"]
roles = ["db"]
dc = "eu"
[sites."s[3-4]"]
roles = ["db"]
dc = "us"
[sites."s[5-6]"]
roles = ["db"]
dc = "ap"

[locks.one-per-dc]
per = "dc"
limit = 1

[[jobs.migrate]]
roles = ["db"]
locks = ["one-per-dc"]
run = "{}"
"#,
        timed("migrate", "0.3")
    ));
    let out = polyshell(dir.path(), &["jobs", "migrate", "--mode", "parallel"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spans = spans(dir.path());
    assert_eq!(spans.len(), 6);
    let dc = |site: &str| match site {
        "s1" | "s2" => "eu",
        "s3" | "s4" => "us",
        _ => "ap",
    };
    apart_within_and_together_across(&spans, dc, "dc");
    // The summary names the lock that held a site back the longest.
    assert!(
        text(&out.stderr).contains("longest lock wait: `one-per-dc` held s"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn limit_two_never_lets_three_run_across_two_jobs_and_two_chain_entries() {
    let dir = place(&format!(
        r#"
[sites."s[1-6]"]
roles = ["web"]

[locks.two]
limit = 2

[[jobs.a]]
roles = ["web"]
run = "{}"
[[jobs.b]]
roles = ["web"]
run = "{}"
[[jobs.c]]
roles = ["web"]
run = "{}"

[schedules.rolling]
chain = [
  {{ jobs = ["a", "b"], mode = "parallel", locks = ["two"] }},
  {{ jobs = ["c"], mode = "parallel", locks = ["two"] }},
]
"#,
        timed("a", "0.2"),
        timed("b", "0.2"),
        timed("c", "0.2"),
    ));
    let out = polyshell(dir.path(), &["schedule", "rolling", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spans = spans(dir.path());
    assert_eq!(spans.len(), 18);
    let (first, second): (Vec<Span>, Vec<Span>) = spans.into_iter().partition(|s| s.job != "c");
    // Jobs a and b share the lock: two at once between them, never three.
    assert_eq!(most_at_once(&first), 2, "{first:?}");
    assert_eq!(most_at_once(&second), 2, "{second:?}");
    // The JSON stream says who waited for which lock, and how long.
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let waits = events
        .iter()
        .filter(|e| e["event"] == "lock_waiting")
        .count();
    let acquired: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "lock_acquired")
        .collect();
    assert!(waits >= 10, "{waits} lock waits");
    assert_eq!(acquired.len(), waits);
    assert!(acquired.iter().all(|e| e["lock"] == "two"));
    assert!(acquired
        .iter()
        .any(|e| e["waited_ms"].as_u64().unwrap() >= 150));
    let summary = events.last().unwrap();
    assert_eq!(summary["longest_lock_wait"]["lock"], "two");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A lock with every mode, fanout, max_failures and break_on_error: never more at once
    /// than the lock and the fanout allow, and at most max_failures + what was in flight fails.
    #[test]
    fn locks_hold_together_with_fanout_and_max_failures(
        limit in 1usize..=3,
        fanout in prop::option::of(1usize..=3),
        max_failures in prop::option::of(1usize..=2),
        mode in prop::sample::select(vec!["site-sequential", "sequential", "atomic", "parallel"]),
        break_on_error in any::<bool>(),
        failing in prop::collection::btree_set(1usize..=5, 0..4),
    ) {
        let mut schedule = format!(
            "[schedules.s]\njobs = [\"work\"]\nmode = \"{mode}\"\nbreak_on_error = {break_on_error}\nlocks = [\"bound\"]\n"
        );
        if let Some(n) = fanout {
            schedule.push_str(&format!("fanout = {n}\n"));
        }
        if let Some(n) = max_failures {
            schedule.push_str(&format!("max_failures = {n}\n"));
        }
        let run = "echo {name} work start $(date +%s%N) >> log; sleep 0.05; echo {name} work end $(date +%s%N) >> log; test ! -e fail-{name}";
        let dir = place(&format!(
            "[sites.\"s[1-5]\"]\nroles = [\"app\"]\n\n[locks.bound]\nlimit = {limit}\n\n[[jobs.work]]\nroles = [\"app\"]\nrun = \"{run}\"\n\n{schedule}"
        ));
        for n in &failing {
            std::fs::write(dir.path().join(format!("fail-s{n}")), "").unwrap();
        }
        let out = polyshell(dir.path(), &["schedule", "s"]);
        prop_assert!(out.status.code() != Some(2), "{}", text(&out.stderr));
        let spans = spans(dir.path());
        let cap = limit.min(fanout.unwrap_or(usize::MAX)).min(if mode == "atomic" { 1 } else { usize::MAX });
        prop_assert!(most_at_once(&spans) <= cap, "{} at once, cap {cap}: {spans:?}", most_at_once(&spans));
        let failed = spans
            .iter()
            .filter(|s| failing.contains(&s.site[1..].parse::<usize>().unwrap()))
            .count();
        if let Some(m) = max_failures {
            prop_assert!(failed < m + cap, "{failed} failed with max_failures {m}, cap {cap}");
        }
        prop_assert_eq!(out.status.success(), failing.is_empty() && spans.len() == 5);
    }
}

#[test]
fn cancellation_while_waiting_for_a_lock_ends_the_run() {
    // A sleep only this test runs, to find leftovers by.
    let marker = format!("sleep 30.{}", std::process::id());
    let dir = place(&format!(
        r#"
[sites."s[1-3]"]
roles = ["app"]

[locks.one]
limit = 1

[[jobs.long]]
roles = ["app"]
locks = ["one"]
run = "echo {{name}} long start $(date +%s%N) >> log; {marker}"
"#
    ));
    let mut cmd = command(
        Path::new(env!("CARGO_BIN_EXE_polyshell")),
        dir.path(),
        &["jobs", "long", "--mode", "parallel"],
    );
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(dir.path().join("log"))
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "nothing started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    // Ctrl-C twice, as an operator does: the waiting sites never start, the running one ends.
    for _ in 0..2 {
        // SAFETY: kill(2) on the child, which this test spawned.
        unsafe { libc::kill(pid, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(200));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: as above, the whole group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            panic!("the run did not end within 20s of the second Ctrl-C");
        }
    };
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("1 failed, 2 skipped") && stderr.contains("skipped: the run was stopped"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let left = Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        text(&left.stdout)
    );
}

#[test]
fn check_reports_every_lock_error_with_line_and_column() {
    let dir = place(
        r#"[sites.a1]
roles = ["app"]
dc = "eu"
[sites.a2]
roles = ["app"]

[locks.zero]
limit = 0
[locks.typo]
limits = 2
[locks.stray]
limit = 1
missing = "skip-lock"
[locks.dc]
per = "dc"
limit = 1
[locks.odd]
kind = "no-such-kind"

[[jobs.x]]
roles = ["app"]
locks = ["dc", "nope"]
run = "true"

[schedules.s]
jobs = ["x"]
locks = ["missing-too"]
"#,
    );
    let out = polyshell(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    for expected in [
        "Polyfile.toml:8:9: error: lock `zero`: `limit` must be a whole number, at least 1",
        "Polyfile.toml:10:1: error: lock `typo`: unknown key `limits`",
        "Polyfile.toml:13:11: error: lock `stray`: `missing` goes with `per = \"KEY\"` only",
        "Polyfile.toml:18:8: error: lock `odd`: unknown lock kind `no-such-kind` (kinds: semaphore)",
        "Polyfile.toml:22:9: error: job `x`: no lock `nope` (locks: dc)",
        "Polyfile.toml:22:9: error: job `x`: lock `dc` is per `dc`, and a2 has no `dc`",
        "Polyfile.toml:27:9: error: schedule `s`: no lock `missing-too`",
    ] {
        assert!(stderr.contains(expected), "no `{expected}` in:\n{stderr}");
    }
    // Nothing runs while a lock is wrong.
    let out = polyshell(dir.path(), &["jobs", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The example program: the whole CLI plus a lock kind of its own.
fn rack_lock_example() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_polyshell"));
    let example = bin.parent().unwrap().join("examples").join("rack_lock");
    if !example.exists() {
        // `cargo test` builds the examples; a filtered run (`--test locks`) may not have.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "polyshell-cli",
                "--example",
                "rack_lock",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build examples/rack_lock.rs");
    }
    assert!(example.exists(), "no {}", example.display());
    example
}

#[test]
fn a_program_adds_a_lock_kind_the_polyfile_uses() {
    let polyfile = format!(
        r#"
[sites."s[1-2]"]
roles = ["app"]
rack = "r1"
[sites."s[3-4]"]
roles = ["app"]
rack = "r2"

[locks.racks]
kind = "one-per-rack"
key = "rack"

[[jobs.work]]
roles = ["app"]
locks = ["racks"]
run = "{}"
"#,
        timed("work", "0.3")
    );
    let dir = place(&polyfile);
    let example = rack_lock_example();
    let out = command(
        &example,
        dir.path(),
        &["jobs", "work", "--mode", "parallel"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spans = spans(dir.path());
    assert_eq!(spans.len(), 4);
    let rack = |s: &str| if s == "s1" || s == "s2" { 1 } else { 2 };
    apart_within_and_together_across(&spans, rack, "rack");
    // The kind's own checks are reported like any Polyfile error; the plain binary does not
    // know the kind.
    std::fs::write(
        dir.path().join("Polyfile.toml"),
        polyfile.replace("key = \"rack\"", "key = 7"),
    )
    .unwrap();
    let out = command(&example, dir.path(), &["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("lock `racks`: `key` must be a site key's name"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(dir.path().join("Polyfile.toml"), &polyfile).unwrap();
    let out = polyshell(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown lock kind `one-per-rack`"));
}
