//! The commands that only read and print: `check`, `sites`, `hosts`.

use crate::args::{Cli, HostsAction};
use crate::exit::{self, CliError};
use crate::targets::PolyfileRoles;
use crate::targets::{inventory, polyfile_path, read_polyfile};
use polyshell_sites::{range, SiteStore};

pub(crate) fn check(cli: &Cli) -> Result<u8, CliError> {
    let path = polyfile_path(cli)
        .ok_or_else(|| CliError::usage("no Polyfile to check (-f FILE, or ./Polyfile.toml)"))?;
    let pf = read_polyfile(&path)?;
    let site_count = pf.sites.len();
    // A site without `host` runs on this machine: say which, so that a missing or
    // mistyped host is seen before a job runs "remotely" right here.
    let local: Vec<String> = pf
        .sites
        .list(polyshell_sites::ALL, ())
        .into_iter()
        .filter(|name| {
            pf.sites
                .get(name)
                .is_some_and(|s| s.host().ok().flatten().is_none())
        })
        .collect();
    if !local.is_empty() {
        println!(
            "sites that run on this machine (no `host`): {}",
            polyshell_sites::range::fold(&local)
        );
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut counts = vec![
        plural(site_count, "site"),
        plural(pf.jobs.len(), "job"),
        plural(pf.schedules.len(), "schedule"),
    ];
    if !pf.locks.is_empty() {
        counts.push(plural(pf.locks.len(), "lock"));
    }
    println!("{}: ok ({})", path.display(), counts.join(", "));
    Ok(exit::SUCCESS)
}

pub(crate) fn sites(cli: &Cli, args: &[String]) -> Result<u8, CliError> {
    let inv = inventory(cli)?;
    match args {
        [show, name] if show == "show" => {
            let site = inv
                .sites
                .get(name)
                .ok_or_else(|| CliError::usage(format!("no site `{name}`")))?;
            println!("{name}");
            println!("  roles: {}", inv.sites.roles_of(name).join(", "));
            let text =
                serde_json::to_string_pretty(&serde_json::Value::Object(site.config().clone()))
                    .unwrap_or_default();
            for line in text.lines() {
                println!("  {line}");
            }
            Ok(exit::SUCCESS)
        }
        [role] => {
            if !inv.sites.has_role(role) {
                return Err(CliError::usage(format!(
                    "`{role}` is neither a role nor a site (roles: {})",
                    inv.sites.role_names().join(", ")
                )));
            }
            print_sites(&inv.sites, &inv.sites.list(role, ()));
            Ok(exit::SUCCESS)
        }
        [] => {
            print_sites(&inv.sites, &inv.sites.list("all", ()));
            Ok(exit::SUCCESS)
        }
        _ => Err(CliError::usage(
            "usage: polyshell sites [ROLE] | polyshell sites show NAME",
        )),
    }
}

/// `polyshell hosts expand|fold|count PATTERN...`: the union of the patterns.
pub(crate) fn hosts(
    cli: &Cli,
    action: HostsAction,
    patterns: &[String],
    separator: &str,
) -> Result<u8, CliError> {
    let mut patterns = patterns.to_vec();
    if patterns.is_empty() {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
            .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
        patterns = input.split_whitespace().map(str::to_owned).collect();
    }
    let roles = PolyfileRoles::new(cli);
    let mut names = std::collections::BTreeSet::new();
    for pattern in &patterns {
        names.extend(roles.expand(pattern, "hosts")?);
        if names.len() > range::MAX_EXPANSION {
            return Err(CliError::usage(format!(
                "hosts: the patterns make more than {} names",
                range::MAX_EXPANSION
            )));
        }
    }
    match action {
        HostsAction::Count => println!("{}", names.len()),
        HostsAction::Fold => println!("{}", range::fold(&names)),
        HostsAction::Expand => {
            let mut names: Vec<String> = names.into_iter().collect();
            names.sort_by_cached_key(|n| range::sort_key(n));
            let separator = separator.replace("\\n", "\n").replace("\\t", "\t");
            println!("{}", names.join(&separator));
        }
    }
    Ok(exit::SUCCESS)
}

pub(crate) fn print_sites(store: &SiteStore, names: &[String]) {
    let width = names.iter().map(String::len).max().unwrap_or(0);
    for name in names {
        let host = store
            .get(name)
            .and_then(|s| s.host().ok().flatten().map(str::to_owned))
            .unwrap_or_else(|| "(local)".into());
        println!("{name:<width$}  {host}");
    }
    println!(
        "{} site{}: {}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        range::fold(names)
    );
}

/// `polyshell connections [close [TARGETS]]`: what the keeper of `--persist` holds, or
/// closing some or all of it.
pub(crate) async fn connections(
    action: Option<&crate::args::ConnectionsAction>,
) -> Result<u8, CliError> {
    use polyshell_shell::keeper::Keeper;
    let failed = |e: polyshell_shell::ErrorKind| CliError {
        status: exit::SITE_FAILED,
        message: e.to_string(),
    };
    let Some(keeper) = Keeper::running().await.map_err(failed)? else {
        say("no connections are kept (no keeper runs; `--persist DURATION` starts one)\n");
        return Ok(exit::SUCCESS);
    };
    match action {
        None => {
            let list = keeper.list().await.map_err(failed)?;
            if list.is_empty() {
                say("no connections are kept\n");
                return Ok(exit::SUCCESS);
            }
            let width = list.iter().map(|k| k.site.len()).max().unwrap_or(4).max(4);
            let host_width = list.iter().map(|k| k.host.len()).max().unwrap_or(4).max(4);
            let mut text = format!(
                "{:width$}  {:host_width$}  {:>7}  {:>7}  {:>6}  {:>8}\n",
                "SITE", "HOST", "AGE", "IDLE", "IN USE", "KEPT FOR"
            );
            for k in &list {
                text += &format!(
                    "{:width$}  {:host_width$}  {:>7}  {:>7}  {:>6}  {:>8}\n",
                    k.site,
                    k.host,
                    span(k.age_secs),
                    span(k.idle_secs),
                    k.in_use,
                    span(k.persist_secs)
                );
            }
            say(&text);
            Ok(exit::SUCCESS)
        }
        Some(crate::args::ConnectionsAction::Close { targets }) => {
            let mut patterns = Vec::new();
            for word in targets.iter().flat_map(|t| t.split(',')) {
                let word = word.trim();
                if word.is_empty() {
                    continue;
                }
                if word.contains('[') {
                    let names = range::expand_with(word, &range::EmptyGroups)
                        .map_err(|e| CliError::usage(format!("connections close: {e}")))?;
                    patterns.extend(names);
                } else {
                    patterns.push(word.to_owned());
                }
            }
            let count = keeper.close(&patterns).await.map_err(failed)?;
            say(&format!(
                "closed {count} kept connection{}\n",
                if count == 1 { "" } else { "s" }
            ));
            Ok(exit::SUCCESS)
        }
    }
}

/// Standard output, a reader that went away (`| head`) being no error.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Seconds as `45s`, `12m05s`, `3h02m`.
fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
