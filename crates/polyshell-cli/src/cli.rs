//! The command line's dispatch: arguments (`args.rs`) resolved to an inventory
//! (`targets.rs`), then the command run or printed (`info.rs`).

pub use crate::args::command;
use crate::args::{Cli, Command, KnownHosts};
use crate::complete;
use crate::exit::{self, CliError};
use crate::info;
use crate::polyfile::Polyfile;
use crate::report::OutputMode;
use crate::run::{self, Plan, Settings};
use crate::shells::ShellSettings;
use crate::steps;
use crate::targets::{inventory, polyfile_path, targets, Inventory};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use polyshell_sched::{action, Jobs, Mode, Schedule};
use polyshell_shell::HostKeyPolicy;
use polyshell_sites::{json, range};
use std::path::PathBuf;
use std::time::Duration;

/// Parses the process arguments and runs the command; the exit status (see [`crate::exit`]).
pub fn main() -> u8 {
    // Asked by the shell's completion function (`polyshell completions SHELL`): answer, exit.
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(complete::VAR)
        .complete();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (mut cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
        }
    };
    cli.argv = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Command::Rerun { id, failed } = &cli.command {
        match rerun_cli(&cli, &matches, id, *failed) {
            Ok(Some(rerun)) => cli = rerun,
            Ok(None) => return exit::SUCCESS,
            Err(err) => {
                eprintln!("polyshell: {}", err.message);
                return err.status;
            }
        }
    }
    init_tracing(cli.verbose);
    // One thread: the CLI only orchestrates (the SSH work runs on polyshell-shell's own
    // runtime, commands in their processes); a multi-thread runtime here cost a thread wake-up
    // per event crossing from the SSH runtime, ~2x the context switches and ~12% more CPU.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("polyshell: cannot start the async runtime: {err}");
            return exit::SITE_FAILED;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // A prompt abandoned on Ctrl-C leaves a thread blocked reading the terminal: do not wait
    // for it (dropping the runtime would).
    runtime.shutdown_timeout(Duration::from_millis(200));
    crate::pump::Pump::drain_at_exit();
    match result {
        Ok(status) => status,
        Err(err) => {
            eprintln!("polyshell: {}", err.message);
            err.status
        }
    }
}

/// The checks polyshell makes of its arguments before it reads a file or connects: the
/// options (durations, counts, modes) and the host patterns of `-H` and `--on`. `args`
/// starts with the program's name. The fuzz target `cli_args` feeds it.
pub fn check_arguments<I, T>(args: I) -> Result<(), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| CliError::usage(e.to_string()))?;
    // Groups (`@ROLE`) need the Polyfile; here only their syntax and size are checked.
    let check = |pattern: &str, what: &str| {
        range::expand_with(pattern, &range::EmptyGroups)
            .map(drop)
            .map_err(|e| CliError::usage(format!("{what}: {e}")))
    };
    if let Some(hosts) = &cli.hosts {
        check(hosts, "-H")?;
    }
    let on = match &cli.command {
        Command::Run { on, .. }
        | Command::Jobs { on, .. }
        | Command::Upload { on, .. }
        | Command::Download { on, .. } => on.as_deref(),
        _ => None,
    };
    if let Some(on) = on {
        check(on, "--on")?;
    }
    Ok(())
}

/// The command line of a recorded run, for `rerun`: its arguments, its Polyfile (by absolute
/// path), its directory, limited to the sites that did not succeed with `--failed`. Options
/// given to `rerun` itself replace the recorded ones, but for `-f` and `-H` (what the run was).
/// `None`: nothing to do (no site to rerun).
fn rerun_cli(
    cli: &Cli,
    matches: &ArgMatches,
    id: &str,
    failed: bool,
) -> Result<Option<Cli>, CliError> {
    let given =
        |arg: &str| matches.value_source(arg) == Some(clap::parser::ValueSource::CommandLine);
    if given("file") || given("hosts") {
        return Err(CliError::usage(
            "rerun: -f and -H cannot change what a recorded run was; run it anew instead",
        ));
    }
    let ledger = crate::record::ledger()?;
    let rerun = crate::record::rerun(&ledger, id, failed)?;
    if rerun.only.as_ref().is_some_and(Vec::is_empty) {
        eprintln!(
            "polyshell: run {}: every site succeeded; nothing to rerun",
            rerun.id
        );
        return Ok(None);
    }
    let mut new =
        Cli::try_parse_from(std::iter::once("polyshell".to_owned()).chain(rerun.argv.clone()))
            .map_err(|e| {
                CliError::usage(format!(
                    "run {}: its command line does not parse now: {}",
                    rerun.id,
                    e.to_string().trim()
                ))
            })?;
    if let Some(dir) = &rerun.cwd {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!(
                "polyshell: warning: run {} ran in {}, which cannot be entered now ({e}); relative paths are taken from here",
                rerun.id,
                dir.display()
            );
        }
    }
    if rerun.polyfile.is_some() {
        new.file = rerun.polyfile.clone();
    }
    if given("fanout") {
        new.fanout = cli.fanout;
    }
    if given("timeout") {
        new.timeout = cli.timeout;
    }
    if given("connect_timeout") {
        new.connect_timeout = cli.connect_timeout;
    }
    if given("output") {
        new.output = cli.output;
    }
    if given("ask_sudo_pass") {
        new.ask_sudo_pass = true;
    }
    if given("sudo_password_file") {
        new.sudo_password_file = cli.sudo_password_file.clone();
    }
    if given("known_hosts") {
        new.known_hosts = cli.known_hosts;
    }
    if given("ssh_config") {
        new.ssh_config = cli.ssh_config.clone();
    }
    if given("verbose") {
        new.verbose = cli.verbose;
    }
    if given("persist") {
        new.persist = cli.persist;
    }
    new.dry_run |= cli.dry_run;
    new.no_record |= cli.no_record;
    if let Some(only) = &rerun.only {
        eprintln!(
            "polyshell: rerun of {} on {} site{}: {}",
            rerun.id,
            only.len(),
            if only.len() == 1 { "" } else { "s" },
            range::fold(only)
        );
    }
    new.argv = rerun.argv;
    new.only = rerun.only;
    new.rerun_of = Some(rerun.id);
    Ok(Some(new))
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 | 1 => return,
        2 => "polyshell=debug,polyshell_shell=debug,polyshell_sched=debug,polyshell_auth=debug",
        _ => "trace",
    };
    // Log lines take the terminal's one output path: held while a prompt is up, and never
    // blocking on a stalled reader past Ctrl-C.
    struct LogWriter;
    impl std::io::Write for LogWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            crate::run::log(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(|| LogWriter)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .try_init();
}

fn shell_settings(cli: &Cli) -> ShellSettings {
    ShellSettings {
        connect_timeout: cli.connect_timeout,
        host_key_policy: cli.known_hosts.map(|k| match k {
            KnownHosts::Strict => HostKeyPolicy::Strict,
            KnownHosts::AcceptNew => HostKeyPolicy::AcceptNew,
            KnownHosts::Off => HostKeyPolicy::Off,
        }),
        ssh_config: cli
            .ssh_config
            .clone()
            .or_else(|| std::env::var_os("POLYSHELL_SSH_CONFIG").map(PathBuf::from)),
        password_file: cli.sudo_password_file.clone(),
        persist: None,
    }
}

/// `--persist`, else `POLYSHELL_PERSIST`, else the Polyfile's `[settings] persist`; zero is none.
fn persist(cli: &Cli, polyfile: Option<Duration>) -> Result<Option<Duration>, CliError> {
    let from_env = match std::env::var("POLYSHELL_PERSIST") {
        Ok(text) if !text.trim().is_empty() => Some(
            crate::values::duration_or_zero(&text)
                .map_err(|e| CliError::usage(format!("POLYSHELL_PERSIST: {e}")))?,
        ),
        _ => None,
    };
    Ok(cli
        .persist
        .or(from_env)
        .or(polyfile)
        .filter(|d| !d.is_zero()))
}

/// How the run is carried out and recorded. A ledger configured wrongly (the environment)
/// is a usage error: found before anything runs.
fn settings(cli: &Cli, plan: &Plan) -> Result<Settings, CliError> {
    let record = if cli.no_record {
        None
    } else {
        let header = crate::record::Header {
            argv: cli.argv.clone(),
            what: what(&cli.command),
            polyfile: polyfile_path(cli),
            only: cli.only.clone(),
            rerun_of: cli.rerun_of.clone(),
        };
        match crate::record::ledger() {
            Ok(ledger) => Some((
                ledger,
                header.fields(&plan.planned, &plan.sites, &plan.chain),
            )),
            // No home at all (a bare service environment): the run goes on, unrecorded.
            Err(e) if e.message == crate::record::NO_PLACE => {
                eprintln!(
                    "polyshell: warning: this run is not recorded: {}",
                    e.message
                );
                None
            }
            Err(e) => return Err(e),
        }
    };
    let mut shells = shell_settings(cli);
    shells.persist = persist(cli, plan.persist)?;
    Ok(Settings {
        output: cli.output,
        shells,
        ask_sudo_pass: cli.ask_sudo_pass,
        record,
    })
}

/// What a run is, in a few words, for the ledger's listing.
fn what(command: &Command) -> String {
    let words: Vec<String> = match command {
        Command::Run { sudo, command, .. } => {
            let mut w = vec!["run".to_owned()];
            if *sudo {
                w.push("--sudo".into());
            }
            w.extend(command.iter().cloned());
            w
        }
        Command::Jobs { jobs, .. } => std::iter::once("jobs".to_owned())
            .chain(jobs.iter().cloned())
            .collect(),
        Command::Schedule { name } => vec!["schedule".into(), name.clone()],
        Command::Upload { src, dst, .. } => {
            vec!["upload".into(), src.display().to_string(), dst.clone()]
        }
        Command::Download { src, dst, .. } => {
            vec!["download".into(), src.clone(), dst.display().to_string()]
        }
        _ => Vec::new(),
    };
    words.join(" ")
}

/// Targets limited to the sites a rerun is for.
fn only(cli: &Cli, mut targets: Vec<String>) -> Result<Vec<String>, CliError> {
    if let Some(only) = &cli.only {
        targets.retain(|t| only.contains(t));
        if targets.is_empty() {
            return Err(CliError::usage(format!(
                "none of the sites to rerun ({}) is a target now",
                range::fold(only)
            )));
        }
    }
    Ok(targets)
}

/// Applies the global options to a schedule.
fn tune(cli: &Cli, mut schedule: Schedule) -> Schedule {
    if let Some(n) = cli.fanout {
        schedule = schedule.fanout(n);
    }
    if cli.verbose >= 1 {
        schedule = schedule.log(true);
    }
    if cli.verbose >= 2 {
        schedule = schedule.debug(true);
    }
    if cli.output == OutputMode::Quiet {
        schedule = schedule.quiet(true);
    }
    schedule
}

/// `--known-hosts off`: one warning line, at every verbosity, naming the SSH sites whose
/// host keys this run will not check.
fn warn_unchecked_host_keys(cli: &Cli, plan: &Plan) {
    if !matches!(cli.known_hosts, Some(KnownHosts::Off)) {
        return;
    }
    let ssh: Vec<String> = plan
        .targets
        .iter()
        .filter(|name| {
            plan.sites
                .get(name)
                .is_some_and(|s| s.host().ok().flatten().is_some())
        })
        .cloned()
        .collect();
    if !ssh.is_empty() {
        eprintln!(
            "polyshell: warning: --known-hosts off: the host keys of {} are not checked; \
             anyone on the network path can pose as them",
            range::fold(&ssh)
        );
    }
}

/// A one-action job on `targets`, run in parallel: what `run`, `upload`, `download` are.
/// `describe` says what it does, for `--dry-run`.
async fn adhoc(
    cli: &Cli,
    inv: Inventory,
    targets: Vec<String>,
    name: &str,
    describe: String,
    act: polyshell_sched::ActionFn,
) -> Result<u8, CliError> {
    let targets = only(cli, targets)?;
    let role = format!("polyshell:{name}");
    inv.sites.add(&targets, &role, json!({}));
    let mut jobs = Jobs::new();
    jobs.add(name, &role, act);
    let schedule = tune(cli, Schedule::new(name).mode(Mode::Parallel).name(name));
    if cli.dry_run {
        crate::dryrun::adhoc(&describe, &schedule, &targets, cli.timeout);
        return Ok(exit::SUCCESS);
    }
    let plan = Plan {
        persist: inv.polyfile.as_ref().and_then(|pf| pf.persist),
        sites: inv.sites,
        jobs,
        chain: vec![schedule],
        actions: targets.len(),
        planned: targets.iter().map(|t| (t.clone(), 1)).collect(),
        targets,
    };
    warn_unchecked_host_keys(cli, &plan);
    let settings = settings(cli, &plan)?;
    Ok(run::execute(plan, settings).await)
}

async fn dispatch(cli: Cli) -> Result<u8, CliError> {
    match &cli.command {
        Command::Completions { shell } => {
            complete::registration(*shell)
                .map_err(|e| CliError::usage(format!("completions: {e}")))?;
            Ok(exit::SUCCESS)
        }
        Command::Check => info::check(&cli),
        Command::Hosts {
            action,
            patterns,
            separator,
        } => info::hosts(&cli, *action, patterns, separator),
        Command::Sites { args } => info::sites(&cli, args),
        Command::Runs { args } => {
            let ledger = crate::record::ledger()?;
            match args.as_slice() {
                [] => crate::record::list(&ledger)?,
                [show, id] if show == "show" => crate::record::show(&ledger, id, cli.output)?,
                _ => {
                    return Err(CliError::usage(
                        "usage: polyshell runs | polyshell runs show ID|last",
                    ))
                }
            }
            Ok(exit::SUCCESS)
        }
        Command::Serve {
            listen,
            token,
            token_file,
        } => {
            let token = match token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            CliError::usage(format!("cannot read {}: {e}", path.display()))
                        })?
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                ),
                None => token.clone(),
            };
            crate::serve::serve(crate::record::ledger()?, *listen, token).await
        }
        Command::Connections { action } => crate::info::connections(action.as_ref()).await,
        Command::Rerun { .. } => Err(CliError::usage(
            "rerun: the recorded run could not be prepared",
        )),
        Command::Run { on, sudo, command } => {
            let inv = inventory(&cli)?;
            let targets = targets(&inv, on.as_deref(), "run")?;
            let script = command.join(" ");
            let describe = format!("{}: {script}", if *sudo { "sudo" } else { "run" });
            let (sudo, timeout) = (*sudo, cli.timeout);
            let act = action(move |ctx| {
                let script = script.clone();
                async move {
                    let command = steps::site_command(
                        &ctx.site,
                        script.clone(),
                        steps::CommandSettings {
                            env: &[],
                            cwd: None,
                            timeout: None,
                            fallback: timeout,
                        },
                    )?;
                    let out = if sudo {
                        ctx.shell.sudo(command).await
                    } else {
                        ctx.shell.run(command).await
                    };
                    // One command per site: let go of the connection now, so that a
                    // thousand-site run never holds a thousand idle sessions.
                    ctx.shell.disconnect().await;
                    steps::check(&script, &out?)
                }
            });
            adhoc(&cli, inv, targets, "run", describe, act).await
        }
        Command::Upload { src, dst, on } => {
            let inv = inventory(&cli)?;
            let targets = targets(&inv, on.as_deref(), "upload")?;
            if !src.exists() {
                return Err(CliError::usage(format!(
                    "upload: {} does not exist",
                    src.display()
                )));
            }
            let describe = format!("upload {} -> {dst}", src.display());
            let (src, dst) = (src.clone(), dst.clone());
            let act = action(move |ctx| {
                let (src, dst) = (src.clone(), dst.clone());
                async move { Ok(ctx.shell.upload(&src, &dst).await?) }
            });
            adhoc(&cli, inv, targets, "upload", describe, act).await
        }
        Command::Download { src, dst, on } => {
            let inv = inventory(&cli)?;
            let targets = targets(&inv, on.as_deref(), "download")?;
            let describe = format!("download {src} -> {}/SITE", dst.display());
            let (src, dst) = (src.clone(), dst.clone());
            let act = action(move |ctx| {
                let (src, dst) = (src.clone(), dst.join(ctx.site.name()));
                async move { Ok(ctx.shell.download(&src, &dst).await?) }
            });
            adhoc(&cli, inv, targets, "download", describe, act).await
        }
        Command::Jobs {
            jobs,
            mode,
            on,
            break_on_error,
        } => {
            let inv = inventory(&cli)?;
            let pf = inv.polyfile.as_ref().ok_or_else(|| {
                CliError::usage("`jobs` needs a Polyfile (-f FILE or ./Polyfile.toml)")
            })?;
            let mode = match mode {
                Some(m) => m.parse::<Mode>().map_err(CliError::usage)?,
                None => Mode::SiteSequential,
            };
            let mut schedule = Schedule::new(jobs)
                .mode(mode)
                .break_on_error(*break_on_error)
                .name("jobs");
            if let Some(on) = on {
                // Every site is a role of its own name: the sites the pattern selects.
                schedule = schedule.roles(targets(&inv, Some(on), "jobs")?);
            }
            run_polyfile(&cli, pf, vec![tune(&cli, schedule)]).await
        }
        Command::Schedule { name } => {
            let inv = inventory(&cli)?;
            let pf = inv.polyfile.as_ref().ok_or_else(|| {
                CliError::usage("`schedule` needs a Polyfile (-f FILE or ./Polyfile.toml)")
            })?;
            let chain = pf.schedules.get(name).ok_or_else(|| {
                CliError::usage(format!(
                    "no schedule `{name}` in the Polyfile (schedules: {})",
                    pf.schedules.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let chain = chain.iter().map(|s| tune(&cli, s.clone())).collect();
            run_polyfile(&cli, pf, chain).await
        }
    }
}

async fn run_polyfile(cli: &Cli, pf: &Polyfile, chain: Vec<Schedule>) -> Result<u8, CliError> {
    // A rerun: each chain entry on its sites that are to run again; an entry left with none
    // is dropped.
    let chain: Vec<Schedule> = match &cli.only {
        None => chain,
        Some(only) => {
            let chain: Vec<Schedule> = chain
                .into_iter()
                .filter_map(|s| {
                    let sites: Vec<String> = pf
                        .sites
                        .list(polyshell_sites::ALL, &s.roles)
                        .into_iter()
                        .filter(|site| only.contains(site))
                        .collect();
                    (!sites.is_empty()).then(|| s.roles(sites))
                })
                .collect();
            if chain.is_empty() {
                return Err(CliError::usage(format!(
                    "none of the sites to rerun ({}) is in the schedule now",
                    range::fold(only)
                )));
            }
            chain
        }
    };
    if cli.dry_run {
        crate::dryrun::polyfile(pf, &chain, cli.timeout);
        return Ok(exit::SUCCESS);
    }
    let mut jobs = Jobs::new();
    for (name, spec) in &pf.jobs {
        for a in &spec.actions {
            let a = a.clone();
            let roles = a.roles.clone();
            // The global timeout bounds every step whose action and site set none.
            let locks = a.locks.clone();
            jobs.add(name, &roles, steps::build(a, pf.sites.clone(), cli.timeout));
            for lock in locks {
                jobs.lock_action(name, pf.locks[&lock].lock.clone());
            }
        }
    }
    // Every site the chain touches, with how many actions it gets.
    let mut planned: Vec<(String, usize)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for schedule in &chain {
        for job in &schedule.jobs {
            if let Some(spec) = pf.jobs.get(job) {
                for a in &spec.actions {
                    for site in pf.sites.list(&a.roles, &schedule.roles) {
                        match index.get(&site) {
                            Some(&i) => planned[i].1 += 1,
                            None => {
                                index.insert(site.clone(), planned.len());
                                planned.push((site, 1));
                            }
                        }
                    }
                }
            }
        }
    }
    let plan = Plan {
        sites: pf.sites.clone(),
        jobs,
        chain,
        targets: planned.iter().map(|(s, _)| s.clone()).collect(),
        actions: planned.iter().map(|(_, n)| n).sum(),
        planned,
        persist: pf.persist,
    };
    warn_unchecked_host_keys(cli, &plan);
    let settings = settings(cli, &plan)?;
    Ok(run::execute(plan, settings).await)
}
