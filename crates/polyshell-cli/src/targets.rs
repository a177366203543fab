//! The sites a command works on: the Polyfile's, the hosts of `-H`, or the one local site;
//! and which of them a command targets (`--on`, `--only`).

use crate::args::{Cli, Command};
use crate::exit::CliError;
use crate::polyfile::{self, Polyfile};
use polyshell_sites::diag::Source;
use polyshell_sites::{json, range, SiteStore, Value};
use std::path::{Path, PathBuf};

/// The inventory a command works on.
pub(crate) struct Inventory {
    pub(crate) sites: SiteStore,
    pub(crate) polyfile: Option<Polyfile>,
    /// Whether the sites came from `-H` or the embedded default (then `--on` may be omitted).
    pub(crate) implicit: bool,
}

pub(crate) fn read_polyfile(path: &Path) -> Result<Polyfile, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let source = Source::new(path.display().to_string(), text);
    // Near-miss keys (`hots` for `host`) are warned about by every command that reads the
    // Polyfile, not only `check`: such a site would otherwise run its jobs here, silently.
    for w in polyshell_sites::inventory::near_misses(&source) {
        eprintln!("{}:{}:{}: warning: {}", w.file, w.line, w.column, w.message);
    }
    polyfile::load(&source).map_err(|diags| {
        let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        CliError::usage(format!(
            "{} has {} error{}; nothing ran:\n{}",
            path.display(),
            diags.len(),
            if diags.len() == 1 { "" } else { "s" },
            lines.join("\n")
        ))
    })
}

pub(crate) fn polyfile_path(cli: &Cli) -> Option<PathBuf> {
    cli.file.clone().or_else(|| {
        let default = PathBuf::from("Polyfile.toml");
        default.exists().then_some(default)
    })
}

pub(crate) fn inventory(cli: &Cli) -> Result<Inventory, CliError> {
    if let Some(hosts) = &cli.hosts {
        let roles = PolyfileRoles::new(cli);
        let names = roles.expand(hosts, "-H")?;
        // Running on nothing is a mistake; listing nothing (`sites`) is an answer.
        if names.is_empty() && !matches!(cli.command, Command::Sites { .. }) {
            return Err(CliError::usage(format!("-H: `{hosts}` names no host")));
        }
        // A name from `@ROLE` is a site of the Polyfile, with its configuration; any other
        // name is a host.
        let polyfile = roles.loaded();
        let sites = SiteStore::new();
        for name in names {
            match polyfile.and_then(|pf| pf.sites.get(&name)) {
                Some(site) => sites.add(&name, (), Value::Object(site.config().clone())),
                None => sites.add(&name, (), json!({ "host": name })),
            }
        }
        return Ok(Inventory {
            sites,
            polyfile: None,
            implicit: true,
        });
    }
    match polyfile_path(cli) {
        Some(path) => {
            let pf = read_polyfile(&path)?;
            Ok(Inventory {
                sites: pf.sites.clone(),
                polyfile: Some(pf),
                implicit: false,
            })
        }
        None => {
            // The embedded default: one local site.
            let sites = SiteStore::new();
            sites.add("local", (), json!({}));
            Ok(Inventory {
                sites,
                polyfile: None,
                implicit: true,
            })
        }
    }
}

/// The sites `--on TARGETS` names (roles, sites, host ranges); every name must exist.
pub(crate) fn targets(
    inv: &Inventory,
    on: Option<&str>,
    command: &str,
) -> Result<Vec<String>, CliError> {
    let Some(on) = on else {
        if inv.implicit {
            return Ok(inv.sites.list("all", ()));
        }
        return Err(CliError::usage(format!(
            "`{command}` needs --on TARGETS with a Polyfile (touching every site must be asked for: --on all); roles: {}",
            inv.sites.role_names().join(", ")
        )));
    };
    let sites = inv
        .sites
        .select(on)
        .map_err(|e| CliError::usage(format!("--on: {e}")))?;
    if sites.is_empty() {
        return Err(CliError::usage(format!("--on: `{on}` names no site")));
    }
    Ok(sites)
}

/// `@ROLE` in `-H` and `polyshell hosts`: the roles of the Polyfile, read only when a pattern
/// names a group (a pattern without one works with no Polyfile, or a broken one).
pub(crate) struct PolyfileRoles<'a> {
    cli: &'a Cli,
    polyfile: std::cell::OnceCell<Result<Polyfile, String>>,
}

impl<'a> PolyfileRoles<'a> {
    pub(crate) fn new(cli: &'a Cli) -> Self {
        PolyfileRoles {
            cli,
            polyfile: std::cell::OnceCell::new(),
        }
    }

    /// The Polyfile, if a group made it be read.
    pub(crate) fn loaded(&self) -> Option<&Polyfile> {
        self.polyfile.get().and_then(|r| r.as_ref().ok())
    }

    /// `pattern` expanded; a Polyfile that could not be read is reported as itself, not as
    /// an error inside the pattern.
    pub(crate) fn expand(&self, pattern: &str, what: &str) -> Result<Vec<String>, CliError> {
        range::expand_with(pattern, self).map_err(|e| match self.polyfile.get() {
            Some(Err(message)) => CliError::usage(message.clone()),
            _ => CliError::usage(format!("{what}: {e}")),
        })
    }
}

impl range::Groups for PolyfileRoles<'_> {
    fn group(&self, name: &str) -> Result<Vec<String>, String> {
        let polyfile = self.polyfile.get_or_init(|| {
            let path = polyfile_path(self.cli).ok_or_else(|| {
                format!(
                    "`@{name}` is a role of a Polyfile, and there is none \
                     (-f FILE or ./Polyfile.toml)"
                )
            })?;
            read_polyfile(&path).map_err(|e| e.message)
        });
        match polyfile {
            Ok(pf) => range::Groups::group(&pf.sites, name),
            Err(message) => Err(message.clone()),
        }
    }
}
