//! Host patterns at the command line: `polyshell hosts expand|fold|count`, `-H` and `--on`
//! with set operators and `@ROLE`, and their errors (exit 2, the character named).

use assert_cmd::Command;
use std::path::Path;

fn polyshell(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("polyshell").unwrap();
    cmd.current_dir(dir).env("NO_COLOR", "1");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// stdout of a run that must succeed.
fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// stderr of a run that must be a usage error.
fn usage_error(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    text(&out.stderr)
}

#[test]
fn hosts_expands_folds_and_counts_without_a_polyfile() {
    let dir = tempfile::tempdir().unwrap();
    let p = || polyshell(dir.path());
    let cases = [
        (
            vec!["expand", "web[1-4]!web2", "db[1-2]"],
            "db1 db2 web1 web3 web4\n",
        ),
        (vec!["expand", "n[1-9]&n[6-12]"], "n6 n7 n8 n9\n"),
        (vec!["expand", "n[1-9]^n[6-11]"], "n1 n2 n3 n4 n5 n10 n11\n"),
        (vec!["expand", " a1 , a2 "], "a1 a2\n"),
        (
            vec!["expand", "node-00[1-3]0"],
            "node-0010 node-0020 node-0030\n",
        ),
        (
            vec!["fold", "node1", "node2", "node3", "node7"],
            "node[1-3,7]\n",
        ),
        (vec!["fold", "bar002,bar01"], "bar[01,002]\n"),
        (
            vec![
                "fold",
                "yellow[45-240,570-764,800]!yellow[45-240,570-764,800]",
            ],
            "\n",
        ),
        (vec!["count", "dc[1-2]n[1-99]!dc1n[1-9]"], "189\n"),
        (vec!["expand", "-S", "\\n", "n[1-3]"], "n1\nn2\nn3\n"),
    ];
    for (args, expected) in cases {
        assert_eq!(stdout(p().arg("hosts").args(&args)), expected, "{args:?}");
    }
    // No PATTERN: read from standard input, like `nodeset`.
    assert_eq!(
        stdout(p().args(["hosts", "fold"]).write_stdin("n1 n2\nn3 m7\n")),
        "m7,n[1-3]\n"
    );
    for (pattern, at) in [
        ("web[1-4]0[3-4]", "character 9"),
        ("n[1-044]", "character 3"),
        ("a,,b", "character 3"),
        ("n[3/2]", "character 3"),
        ("web!", "character 4"),
    ] {
        let err = usage_error(p().args(["hosts", "expand", pattern]));
        assert!(
            err.contains(at) && err.contains(pattern),
            "{pattern}: {err}"
        );
    }
    let err = usage_error(p().args(["hosts", "expand", "@web"]));
    assert!(err.contains("there is none"), "{err}");
}

const POLYFILE: &str = r#"
[sites."web[01-04]"]
roles = ["web"]

[sites."db[1-2]"]
roles = ["db"]

[sites.web01]
roles = ["eu"]

[sites.db1]
roles = ["eu"]

[[jobs.hello]]
roles = ["all"]
run = "echo hello from {name}"
"#;

/// The sites a run printed from (`site | ...` lines), sorted.
fn sites_that_ran(out: &str) -> Vec<String> {
    let mut sites: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_once(" | ").map(|(s, _)| s.trim().to_owned()))
        .collect();
    sites.sort();
    sites.dedup();
    sites
}

#[test]
fn at_roles_and_operators_select_sites_of_the_polyfile() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Polyfile.toml"), POLYFILE).unwrap();
    let p = || polyshell(dir.path());

    let listed = stdout(p().args(["-H", "@web!web03", "sites"]));
    assert!(listed.contains("3 sites: web[01-02,04]"), "{listed}");
    assert!(
        listed.contains("web01  (local)"),
        "a Polyfile site keeps its config: {listed}"
    );
    assert_eq!(stdout(p().args(["hosts", "fold", "@web&@eu"])), "web01\n");
    assert_eq!(
        stdout(p().args(["hosts", "fold", "@all!@web"])),
        "db[1-2]\n"
    );
    assert_eq!(stdout(p().args(["hosts", "count", "@*"])), "6\n");

    for (on, expected) in [
        ("@web&@eu", vec!["web01"]),
        ("web!web03", vec!["web01", "web02", "web04"]),
        ("@all!@web,db1", vec!["db1", "db2"]),
        ("eu^@db", vec!["db2", "web01"]),
    ] {
        let ran = stdout(p().args(["run", "--on", on, "--", "echo", "hi"]));
        assert_eq!(sites_that_ran(&ran), expected, "--on {on}");
        let ran = stdout(p().args(["jobs", "hello", "--on", on]));
        assert_eq!(sites_that_ran(&ran), expected, "jobs --on {on}");
    }

    let err = usage_error(p().args(["run", "--on", "@nope", "true"]));
    assert!(err.contains("no role `nope` (roles: db, eu, web)"), "{err}");
    let err = usage_error(p().args(["run", "--on", "web01!web01", "true"]));
    assert!(err.contains("names no site"), "{err}");
    let err = usage_error(p().args(["-H", "a!a", "run", "true"]));
    assert!(err.contains("names no host"), "{err}");
    let err = usage_error(p().args(["run", "--on", "nosuch", "true"]));
    assert!(err.contains("neither a role nor a site"), "{err}");
}

#[test]
fn a_broken_polyfile_is_reported_as_itself_when_a_pattern_needs_its_roles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Polyfile.toml"), "[sites.a]\nroles = 3\n").unwrap();
    // A pattern without `@` needs no Polyfile, broken or not.
    assert_eq!(
        stdout(polyshell(dir.path()).args(["hosts", "count", "n[1-5]"])),
        "5\n"
    );
    let err = usage_error(polyshell(dir.path()).args(["hosts", "count", "@web"]));
    assert!(err.contains("Polyfile.toml:2:"), "{err}");
    assert!(!err.contains("at character"), "{err}");
}
