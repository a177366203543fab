//! `--dry-run`: everything a run would do, resolved and printed (sites folded, each chain
//! entry's mode and rails, every step's command as each site would get it, gathered when
//! identical); nothing runs and nothing connects.

use crate::polyfile::{ActionSpec, Polyfile, StepKind};
use crate::subst::{substitute, Scope};
use polyshell_sched::{Schedule, Shared};
use polyshell_sites::{range, SiteStore};
use std::fmt::Write;
use std::time::Duration;

const BANNER: &str = "dry run: nothing runs and nothing connects\n";

fn sites_text(sites: &[String]) -> String {
    format!(
        "{} ({} site{})",
        range::fold(sites),
        sites.len(),
        if sites.len() == 1 { "" } else { "s" }
    )
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A schedule's mode and rails: `site-sequential, break_on_error, fanout 5, ...`.
fn rails(s: &Schedule, timeout: Option<Duration>) -> String {
    let mut parts = vec![s.mode.as_str().to_owned()];
    if s.break_on_error {
        parts.push("break_on_error".into());
    }
    if let Some(n) = s.fanout {
        parts.push(format!("fanout {n}"));
    }
    if let Some(n) = s.max_failures {
        parts.push(format!("max_failures {n}"));
    }
    if let Some(t) = timeout {
        parts.push(format!("timeout {}", seconds(t)));
    }
    if !s.locks.is_empty() {
        let names: Vec<String> = s.locks.iter().map(|l| l.name()).collect();
        parts.push(format!("locks {}", names.join(", ")));
    }
    parts.join(", ")
}

/// Lines of `text` after the first, indented under it.
fn indent(text: &str, by: usize) -> String {
    text.lines()
        .collect::<Vec<_>>()
        .join(&format!("\n{}", " ".repeat(by)))
}

/// `run`, `upload`, `download`: one action on every target.
pub fn adhoc(what: &str, schedule: &Schedule, targets: &[String], timeout: Option<Duration>) {
    let mut out = String::from(BANNER);
    let _ = writeln!(
        out,
        "{} on {}: {}\n  {}",
        schedule.name,
        sites_text(targets),
        rails(schedule, timeout),
        indent(what, 2)
    );
    print!("{out}");
}

/// A chain of the Polyfile's schedules.
pub fn polyfile(pf: &Polyfile, chain: &[Schedule], timeout: Option<Duration>) {
    let mut out = String::from(BANNER);
    let shared = Shared::default();
    for (i, schedule) in chain.iter().enumerate() {
        let involved: Vec<String> = pf.sites.list(polyshell_sites::ALL, &schedule.roles);
        let title = if schedule.name.is_empty() {
            String::new()
        } else {
            format!(" `{}`", schedule.name)
        };
        let _ = writeln!(
            out,
            "schedule {}/{}{title}: {}",
            i + 1,
            chain.len(),
            rails(schedule, timeout)
        );
        if !schedule.roles.is_empty() {
            let _ = writeln!(out, "  only on {}", sites_text(&involved));
        }
        for job in &schedule.jobs {
            let Some(spec) = pf.jobs.get(job) else {
                let _ = writeln!(out, "  job {job}: not in the Polyfile (skipped)");
                continue;
            };
            let _ = writeln!(out, "  job {job}");
            for (n, action) in spec.actions.iter().enumerate() {
                let sites = pf.sites.list(&action.roles, &schedule.roles);
                let _ = writeln!(
                    out,
                    "    action {} (roles {}) on {}",
                    n + 1,
                    action.roles.join(", "),
                    sites_text(&sites)
                );
                render_action(&mut out, action, &pf.sites, &sites, &shared);
            }
        }
    }
    print!("{out}");
}

/// Every step of `action` as each site gets it, identical renderings gathered.
fn render_action(
    out: &mut String,
    action: &ActionSpec,
    store: &SiteStore,
    sites: &[String],
    shared: &Shared,
) {
    let mut notes = Vec::new();
    if let Some(dir) = &action.cwd {
        notes.push(format!("cwd {dir}"));
    }
    if let Some(t) = action.timeout {
        notes.push(format!("timeout {}", seconds(t)));
    }
    if !action.locks.is_empty() {
        notes.push(format!("locks {}", action.locks.join(", ")));
    }
    if !action.env.is_empty() {
        let keys: Vec<&str> = action.env.iter().map(|(k, _)| k.as_str()).collect();
        notes.push(format!("env {}", keys.join(", ")));
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "      ({})", notes.join("; "));
    }
    for step in &action.steps {
        let (label, quote, texts): (&str, bool, Vec<&str>) = match &step.kind {
            StepKind::Run(c) => ("run", true, vec![c]),
            StepKind::Sudo(c) => ("sudo", true, vec![c]),
            StepKind::Local(c) => ("local", true, vec![c]),
            StepKind::Upload { from, to } => ("upload", false, vec![from, to]),
            StepKind::Download { from, to } => ("download", false, vec![from, to]),
        };
        // Each distinct rendering with the sites that get it, in the sites' order.
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for name in sites {
            let Some(site) = store.get(name) else {
                continue;
            };
            let scope = Scope {
                site: &site,
                sites: store,
                batch: "",
                shared,
                dry_run: true,
            };
            let rendered: Result<Vec<String>, String> =
                texts.iter().map(|t| substitute(t, &scope, quote)).collect();
            let text = match rendered {
                Ok(parts) => parts.join(" -> "),
                Err(e) => format!("(cannot be rendered: {e})"),
            };
            match groups.iter_mut().find(|(t, _)| *t == text) {
                Some((_, members)) => members.push(name.clone()),
                None => groups.push((text, vec![name.clone()])),
            }
        }
        let set = step
            .set
            .as_ref()
            .map(|k| format!("  (stdout kept as shared.{k})"))
            .unwrap_or_default();
        for (text, members) in &groups {
            let on = if groups.len() == 1 {
                String::new()
            } else {
                format!(" on {}", range::fold(members))
            };
            let _ = writeln!(out, "      {label}{on}: {}{set}", indent(text, 8));
        }
    }
}
