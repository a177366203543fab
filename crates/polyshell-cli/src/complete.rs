//! Shell completion that knows the Polyfile: jobs, schedules, roles and sites of
//! `./Polyfile.toml` are offered where the command line takes them. The shell's completion
//! function runs polyshell again with `POLYSHELL_COMPLETE=SHELL` (clap_complete's dynamic
//! completion), so the names are always the current ones.

use crate::polyfile::{self, Polyfile};
use clap_complete::CompletionCandidate;
use polyshell_sites::diag::Source;
use std::ffi::OsStr;

/// The environment variable that asks polyshell for completions.
pub const VAR: &str = "POLYSHELL_COMPLETE";

/// `./Polyfile.toml`, if it parses.
fn polyfile() -> Option<Polyfile> {
    let path = std::path::Path::new("Polyfile.toml");
    let text = std::fs::read_to_string(path).ok()?;
    polyfile::load(&Source::new(path.display().to_string(), text)).ok()
}

fn matching(names: impl IntoIterator<Item = String>, current: &OsStr) -> Vec<CompletionCandidate> {
    let current = current.to_str().unwrap_or_default();
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(current))
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(CompletionCandidate::new).collect()
}

pub fn jobs(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(pf) = polyfile() else {
        return Vec::new();
    };
    matching(pf.jobs.keys().cloned(), current)
}

pub fn schedules(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(pf) = polyfile() else {
        return Vec::new();
    };
    matching(pf.schedules.keys().cloned(), current)
}

/// `--on`: roles and sites, the last of a comma list completed.
pub fn targets(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(pf) = polyfile() else {
        return Vec::new();
    };
    let text = current.to_str().unwrap_or_default();
    let (done, last) = match text.rfind(',') {
        Some(i) => (&text[..=i], &text[i + 1..]),
        None => ("", text),
    };
    let names = pf
        .sites
        .role_names()
        .into_iter()
        .chain(pf.sites.list(polyshell_sites::ALL, ()));
    matching(names, OsStr::new(last))
        .into_iter()
        .map(|c| c.add_prefix(done))
        .collect()
}

/// The script a shell sources to complete polyshell (`polyshell completions SHELL`).
pub fn registration(shell: clap_complete::Shell) -> std::io::Result<()> {
    use clap_complete::env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Zsh};
    let completer: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &Bash,
        clap_complete::Shell::Zsh => &Zsh,
        clap_complete::Shell::Fish => &Fish,
        clap_complete::Shell::Elvish => &Elvish,
        clap_complete::Shell::PowerShell => &Powershell,
        _ => &Bash,
    };
    completer.write_registration(
        VAR,
        "polyshell",
        "polyshell",
        "polyshell",
        &mut std::io::stdout(),
    )
}
