//! The Polyfile's actions as scheduler actions: each step in order, `{...}` substituted, the
//! action failing at the first step that fails.

use crate::polyfile::{ActionSpec, StepKind};
use crate::subst::{substitute, Scope};
use polyshell_sched::{action, ActionContext, ActionError, ActionFn};
use polyshell_shell::{Command, Output, Shell};
use polyshell_sites::{json, Site, SiteStore, Value};
use std::sync::Arc;
use std::time::Duration;

/// The scheduler action for `spec`; `fallback_timeout` (the command line's `--timeout`)
/// bounds steps that neither the action nor the site gives a timeout.
pub fn build(spec: ActionSpec, sites: SiteStore, fallback_timeout: Option<Duration>) -> ActionFn {
    let spec = Arc::new(spec);
    action(move |ctx| {
        let spec = spec.clone();
        let sites = sites.clone();
        async move { run_steps(&spec, &sites, &ctx, fallback_timeout).await }
    })
}

/// What a command gets from the site's own configuration and from its action, the action
/// winning: environment (the site's `env`, then the action's), directory (the action's
/// `cwd`, else the site's), timeout (the action's, else the site's, else `fallback`).
pub struct CommandSettings<'a> {
    pub env: &'a [(String, String)],
    pub cwd: Option<String>,
    pub timeout: Option<Duration>,
    pub fallback: Option<Duration>,
}

/// `script` as a command for `site`, with `settings` (see [`CommandSettings`]).
pub fn site_command(
    site: &Site,
    script: String,
    settings: CommandSettings<'_>,
) -> Result<Command, ActionError> {
    let mut command = Command::new(script);
    for (k, v) in site.env()? {
        command = command.env(k, v);
    }
    for (k, v) in settings.env {
        command = command.env(k, v);
    }
    let site_cwd = site.cwd()?;
    if let Some(dir) = settings.cwd.or(site_cwd.map(str::to_owned)) {
        command = command.cwd(dir);
    }
    let site_timeout = site.timeout()?;
    if let Some(t) = settings.timeout.or(site_timeout).or(settings.fallback) {
        command = command.timeout(t);
    }
    Ok(command)
}

fn scope<'a>(ctx: &'a ActionContext, sites: &'a SiteStore) -> Scope<'a> {
    Scope {
        site: &ctx.site,
        sites,
        batch: &ctx.batch,
        shared: &ctx.shared,
        dry_run: false,
    }
}

async fn run_steps(
    spec: &ActionSpec,
    sites: &SiteStore,
    ctx: &ActionContext,
    fallback_timeout: Option<Duration>,
) -> Result<(), ActionError> {
    // `{...}` in the action's env values and cwd are substituted like everywhere else
    // (as data: they are values, not shell code).
    let env = spec
        .env
        .iter()
        .map(|(k, v)| Ok((k.clone(), substitute(v, &scope(ctx, sites), false)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let cwd = match &spec.cwd {
        Some(dir) => Some(substitute(dir, &scope(ctx, sites), false)?),
        None => None,
    };
    for step in &spec.steps {
        match &step.kind {
            StepKind::Run(cmd) | StepKind::Sudo(cmd) | StepKind::Local(cmd) => {
                let script = substitute(cmd, &scope(ctx, sites), true)?;
                let command = site_command(
                    &ctx.site,
                    script,
                    CommandSettings {
                        env: &env,
                        cwd: cwd.clone(),
                        timeout: spec.timeout,
                        fallback: fallback_timeout,
                    },
                )?;
                let out = match &step.kind {
                    StepKind::Sudo(_) => ctx.shell.sudo(command).await?,
                    StepKind::Local(_) => local_shell(ctx).run(command).await?,
                    _ => ctx.shell.run(command).await?,
                };
                check(cmd, &out)?;
                if let Some(key) = &step.set {
                    let value = out.stdout_text().trim().to_owned();
                    ctx.shared.update(ctx.site.name(), |v| {
                        if !v.is_object() {
                            *v = json!({});
                        }
                        v[key.as_str()] = Value::String(value);
                    });
                }
            }
            StepKind::Upload { from, to } => {
                let from = substitute(from, &scope(ctx, sites), false)?;
                let to = substitute(to, &scope(ctx, sites), false)?;
                ctx.shell.upload(expand_home(&from), &to).await?;
            }
            StepKind::Download { from, to } => {
                let from = substitute(from, &scope(ctx, sites), false)?;
                let to = substitute(to, &scope(ctx, sites), false)?;
                ctx.shell.download(&from, expand_home(&to)).await?;
            }
        }
    }
    Ok(())
}

/// A `local` step runs here, its output tagged like the action's.
fn local_shell(ctx: &ActionContext) -> Shell {
    let shell = Shell::local()
        .named(ctx.site.name())
        .with_issuer(&ctx.issuer);
    match ctx.shell.sink() {
        Some(sink) => shell.with_sink(sink.clone()),
        None => shell,
    }
}

/// `~/...` in a local path means the operator's home.
pub fn expand_home(path: &str) -> std::path::PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::Path::new(&home).join(rest),
        _ => std::path::PathBuf::from(path),
    }
}

/// A step whose command exits non-zero fails the action, naming the command and status.
pub fn check(cmd: &str, out: &Output) -> Result<(), ActionError> {
    if out.status.success() {
        return Ok(());
    }
    let mut shown: String = cmd.lines().next().unwrap_or("").chars().take(60).collect();
    if shown.len() < cmd.len() {
        shown.push('…');
    }
    Err(ActionError::CommandFailed {
        command: shown,
        status: out.status,
    })
}
