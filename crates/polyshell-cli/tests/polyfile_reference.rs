//! `docs/polyfile.md` and `docs/polyfile.schema.json` stay true: every TOML example in the
//! reference (and every Polyfile in `examples/`) passes both the schema and `polyshell check`,
//! and Polyfiles that `check` refuses for their shape, the schema refuses too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("docs/polyfile.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

/// The Polyfile as the JSON a TOML plugin validates.
fn as_json(toml: &str) -> serde_json::Value {
    let doc: toml_edit::ImDocument<&str> = toml_edit::ImDocument::parse(toml).expect("TOML");
    polyshell_sites::inventory::to_json(doc.as_item()).expect("TOML values as JSON")
}

/// Schema errors of `toml`, as text (none: valid).
fn schema_errors(validator: &jsonschema::Validator, toml: &str) -> Vec<String> {
    validator
        .iter_errors(&as_json(toml))
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// `polyshell check` of `toml`: whether it passed, and what it printed.
fn check(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Polyfile.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_polyshell"))
        .current_dir(dir.path())
        .arg("-f")
        .arg(&path)
        .args(["--no-record", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
    (out.status.success(), text)
}

/// The ```toml blocks of a Markdown text, with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some((n + 1, String::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```toml block");
    blocks
}

#[test]
fn every_example_of_the_reference_passes_the_schema_and_check() {
    let validator = schema();
    let reference = std::fs::read_to_string(root().join("docs/polyfile.md")).unwrap();
    let blocks = toml_blocks(&reference);
    assert!(blocks.len() >= 8, "the reference lost its examples");
    for (line, toml) in blocks {
        let errors = schema_errors(&validator, &toml);
        assert!(
            errors.is_empty(),
            "docs/polyfile.md:{line}: schema: {errors:#?}"
        );
        let (ok, text) = check(&toml);
        assert!(ok, "docs/polyfile.md:{line}: polyshell check:\n{text}");
    }
}

#[test]
fn the_example_polyfiles_pass_the_schema() {
    let validator = schema();
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let toml = std::fs::read_to_string(&path).unwrap();
            let errors = schema_errors(&validator, &toml);
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        }
    }
}

#[test]
fn polyfiles_of_the_wrong_shape_fail_both_the_schema_and_check() {
    let validator = schema();
    let site = "[sites.local]\n";
    for (why, body) in [
        ("an unknown section", "[hosts.a]\n"),
        ("an unknown action key", "[[jobs.a]]\nroles = [\"local\"]\nrun = \"true\"\nretries = 3\n"),
        ("an action without a step", "[[jobs.a]]\nroles = [\"local\"]\n"),
        ("a step with two commands", "[[jobs.a]]\nroles = [\"local\"]\nsteps = [{ run = \"a\", sudo = \"b\" }]\n"),
        ("a transfer without `to`", "[[jobs.a]]\nroles = [\"local\"]\nupload = { from = \"x\" }\n"),
        ("a zero timeout", "[[jobs.a]]\nroles = [\"local\"]\nrun = \"true\"\ntimeout = 0\n"),
        ("an unknown mode", "[[jobs.a]]\nroles = [\"local\"]\nrun = \"true\"\n[schedules.s]\njobs = [\"a\"]\nmode = \"random\"\n"),
        ("a zero fanout", "[[jobs.a]]\nroles = [\"local\"]\nrun = \"true\"\n[schedules.s]\njobs = [\"a\"]\nfanout = 0\n"),
        ("chain options outside the entries", "[[jobs.a]]\nroles = [\"local\"]\nrun = \"true\"\n[schedules.s]\nmode = \"atomic\"\nchain = [{ jobs = [\"a\"] }]\n"),
        ("a lock without a limit", "[locks.l]\nper = \"dc\"\n"),
        ("a port out of range", "[sites.b]\nhost = \"b\"\nport = 70000\n"),
        ("an unknown setting", "[settings]\nretries = 3\n"),
        ("a persist that is no duration", "[settings]\npersist = \"soon\"\n"),
        ("an invalid variable name", "[[jobs.a]]\nroles = [\"local\"]\nrun = \"true\"\nenv = { \"1X\" = \"y\" }\n"),
    ] {
        let toml = format!("{site}{body}");
        assert!(
            !schema_errors(&validator, &toml).is_empty(),
            "the schema accepts {why}:\n{toml}"
        );
        let (ok, text) = check(&toml);
        assert!(!ok, "check accepts {why}:\n{toml}\n{text}");
    }
}
