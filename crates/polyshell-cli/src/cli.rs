//! The command line: arguments, the inventory they resolve to, and dispatch.

use crate::complete;
use crate::exit::{self, CliError};
use crate::polyfile::{self, Polyfile};
use crate::report::OutputMode;
use crate::run::{self, Plan, Settings};
use crate::shells::ShellSettings;
use crate::steps;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use clap_complete::ArgValueCompleter;
use polyshell_sched::{action, Jobs, Mode, Schedule};
use polyshell_shell::HostKeyPolicy;
use polyshell_sites::diag::Source;
use polyshell_sites::{json, range, SiteStore, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const EXAMPLES: &str = "\
Examples:
  polyshell run -- 'echo hello from $(hostname)'       on the local site
  polyshell -H 'web[01-20]' run -- uptime              on twenty hosts, no Polyfile needed
  polyshell run --on web --sudo -- systemctl restart nginx
  polyshell schedule release                           a chain of schedules from Polyfile.toml
  polyshell check                                      validate Polyfile.toml";

/// The command line as clap defines it (for completions and the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Run jobs on many sites at once, over local shells and SSH.
#[derive(Debug, Parser)]
#[command(name = "polyshell", version, after_help = EXAMPLES)]
struct Cli {
    /// The Polyfile (default: ./Polyfile.toml when it exists; otherwise the one local site).
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    file: Option<PathBuf>,
    /// Target hosts without a Polyfile: a host pattern, e.g. `db1,web[01-03]`,
    /// `web[1-20]!web7`; `@ROLE` takes a role's sites from the Polyfile (`@web&@eu`).
    #[arg(
        short = 'H',
        long = "hosts",
        global = true,
        help_heading = "Global options",
        value_name = "HOSTS"
    )]
    hosts: Option<String>,
    /// At most N sites busy at once (N ≥ 1).
    #[arg(long, global = true, help_heading = "Global options", value_name = "N", value_parser = crate::values::positive)]
    fanout: Option<usize>,
    /// Terminate any command that runs longer than S seconds (its whole process group);
    /// also `500ms`, `10m`, `2h`.
    #[arg(long, global = true, help_heading = "Global options", value_name = "S", value_parser = crate::values::duration)]
    timeout: Option<Duration>,
    /// Give up on a site that does not complete connecting within S seconds (default 10).
    #[arg(long = "connect-timeout", global = true, help_heading = "Global options", value_name = "S", value_parser = crate::values::duration)]
    connect_timeout: Option<Duration>,
    /// How output is shown.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value = "stream"
    )]
    output: OutputMode,
    /// Ask for the sudo password once, before anything runs.
    #[arg(
        short = 'K',
        long = "ask-sudo-pass",
        global = true,
        help_heading = "Global options"
    )]
    ask_sudo_pass: bool,
    /// Read the sudo password from the first line of FILE (or set POLYSHELL_SUDO_PASSWORD).
    #[arg(
        long = "sudo-password-file",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    sudo_password_file: Option<PathBuf>,
    /// Host key checking: strict (default), accept-new (record unknown keys), off.
    #[arg(
        long = "known-hosts",
        global = true,
        help_heading = "Global options",
        value_enum
    )]
    known_hosts: Option<KnownHosts>,
    /// An ssh_config to read instead of ~/.ssh/config.
    #[arg(
        long = "ssh-config",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    ssh_config: Option<PathBuf>,
    /// More detail: -v shows `starting job` lines, -vv debug messages and logs, -vvv traces.
    #[arg(short = 'v', action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    verbose: u8,
    /// Resolve everything and print what would run (sites, schedules, rails, every step's
    /// command per site); connect nowhere, run nothing.
    #[arg(long = "dry-run", global = true, help_heading = "Global options")]
    dry_run: bool,
    /// Do not record this run in the run ledger (`polyshell runs`).
    #[arg(long = "no-record", global = true, help_heading = "Global options")]
    no_record: bool,
    #[command(subcommand)]
    command: Command,
    /// The arguments after the program's name, as the ledger records them (a rerun's are
    /// those of the run it repeats).
    #[arg(skip)]
    argv: Vec<String>,
    /// Set by `rerun`: only these sites.
    #[arg(skip)]
    only: Option<Vec<String>>,
    /// Set by `rerun`: the run repeated.
    #[arg(skip)]
    rerun_of: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KnownHosts {
    Strict,
    AcceptNew,
    Off,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an ad hoc command on the targets.
    #[command(after_help = "Example: polyshell run --on web -- 'df -h /srv'")]
    Run {
        /// Roles, sites or a host pattern: `web,db1`, `@web&@eu`, `web!web03` (`all`: every site).
        #[arg(long, value_name = "TARGETS", add = ArgValueCompleter::new(complete::targets))]
        on: Option<String>,
        /// Run the command as root through sudo (one password prompt for every site).
        #[arg(long)]
        sudo: bool,
        /// The command, for each site's shell: the words after the options (as with ssh and
        /// pdsh), or after `--`.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Run jobs of the Polyfile.
    #[command(
        after_help = "Example: polyshell jobs update deploy --mode site-sequential --break-on-error"
    )]
    Jobs {
        /// Jobs of the Polyfile, run in the order given.
        #[arg(required = true, value_name = "JOB", add = ArgValueCompleter::new(complete::jobs))]
        jobs: Vec<String>,
        /// site-sequential (default), sequential, atomic or parallel.
        #[arg(long, value_name = "MODE")]
        mode: Option<String>,
        /// Only these sites: roles, sites or a host pattern (`@web!web03`).
        #[arg(long, value_name = "ROLES", add = ArgValueCompleter::new(complete::targets))]
        on: Option<String>,
        /// A failed site runs no more jobs (in sequential and atomic modes: no job starts).
        #[arg(long = "break-on-error")]
        break_on_error: bool,
    },
    /// Run a named chain of schedules from the Polyfile.
    #[command(after_help = "Example: polyshell schedule release")]
    Schedule {
        /// A schedule of the Polyfile (`[schedules.NAME]`).
        #[arg(add = ArgValueCompleter::new(complete::schedules))]
        name: String,
    },
    /// Copy a local file or directory to the targets (a directory makes DST a copy of it).
    #[command(after_help = "Example: polyshell upload ./site /srv/www --on web")]
    Upload {
        /// A local file or directory.
        src: PathBuf,
        /// Where it goes on each site (`~` is the login user's home).
        dst: String,
        /// Roles, sites or a host pattern: `web,db1`, `@web&@eu`, `web!web03` (`all`: every site).
        #[arg(long, value_name = "TARGETS", add = ArgValueCompleter::new(complete::targets))]
        on: Option<String>,
    },
    /// Copy a file or directory from the targets into DST/SITE on this machine.
    #[command(after_help = "Example: polyshell download /etc/os-release ./facts --on all")]
    Download {
        /// A file or directory on each site.
        src: String,
        /// A local directory: each site's copy goes to DST/SITE.
        dst: PathBuf,
        /// Roles, sites or a host pattern: `web,db1`, `@web&@eu`, `web!web03` (`all`: every site).
        #[arg(long, value_name = "TARGETS", add = ArgValueCompleter::new(complete::targets))]
        on: Option<String>,
    },
    /// Expand, fold or count host patterns, like ClusterShell's `nodeset -e/-f/-c`.
    #[command(after_help = "Examples: polyshell hosts expand 'web[01-20]!web07'    \
                            polyshell hosts fold web1 web2 web3    \
                            polyshell hosts count '@web&@eu'\n\n\
                            Patterns: `,` union, `!` difference, `&` intersection, `^` \
                            symmetric difference, left to right; `@ROLE` is a role of the \
                            Polyfile (`@all` every site). With no PATTERN, they are read \
                            from standard input, separated by whitespace.")]
    Hosts {
        /// expand (every name), fold (the shortest pattern) or count.
        #[arg(value_enum)]
        action: HostsAction,
        /// Host patterns (their union); none: read from standard input.
        #[arg(value_name = "PATTERN", allow_hyphen_values = true)]
        patterns: Vec<String>,
        /// What separates expanded names (`\n` and `\t` understood).
        #[arg(short = 'S', long, default_value = " ", value_name = "SEP")]
        separator: String,
    },
    /// List the sites (of ROLE), or `sites show NAME` for one site's configuration.
    #[command(after_help = "Examples: polyshell sites web    polyshell sites show web01")]
    Sites {
        #[arg(value_name = "ROLE | show NAME", num_args = 0..=2)]
        args: Vec<String>,
    },
    /// Validate the Polyfile: every error, with line and column.
    #[command(after_help = "Example: polyshell -f deploy.toml check")]
    Check,
    /// The run ledger: recent runs, newest first; `runs show ID|last` prints a run again.
    #[command(
        after_help = "Examples: polyshell runs    polyshell runs show last --output gather\n\n\
                            Runs are kept in $XDG_STATE_HOME/polyshell/runs \
                            (~/.local/state/polyshell/runs): the newest POLYSHELL_RUNS_KEEP \
                            (200), none older than POLYSHELL_RUNS_MAX_AGE (30d), at most \
                            POLYSHELL_RUNS_OUTPUT_CAP (16M) of output each; \
                            POLYSHELL_RUNS_DIR puts them elsewhere."
    )]
    Runs {
        #[arg(value_name = "show ID|last", num_args = 0..=2)]
        args: Vec<String>,
    },
    /// Run a recorded run again: the same command, jobs or schedule, on all its sites.
    #[command(after_help = "Example: polyshell rerun last --failed")]
    Rerun {
        /// A run's id (`polyshell runs` lists them; a unique prefix will do), or `last`.
        #[arg(value_name = "ID|last")]
        id: String,
        /// Only on the sites that did not succeed (failed, unreachable, skipped, cancelled).
        #[arg(long)]
        failed: bool,
    },
    /// A live web view of the run ledger, and its event feed (read-only: it starts nothing).
    #[command(
        after_help = "Example: polyshell serve    then open http://127.0.0.1:7878/\n\n\
                            API: GET /api/runs, /api/runs/ID (JSON), /api/runs/ID/events \
                            (Server-Sent Events: each event as --output json prints it, from \
                            the start, then live). Listening beyond loopback needs a token."
    )]
    Serve {
        /// Where to listen (loopback unless a token is given).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
        listen: std::net::SocketAddr,
        /// Every request must carry this (at least 16 characters); needed off loopback.
        #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
        token: Option<String>,
        /// The token, from the first line of FILE.
        #[arg(long = "token-file", value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example: polyshell completions bash > /etc/bash_completion.d/polyshell"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// What `polyshell hosts` does with its patterns.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum HostsAction {
    Expand,
    Fold,
    Count,
}

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

/// The inventory a command works on.
struct Inventory {
    sites: SiteStore,
    polyfile: Option<Polyfile>,
    /// Whether the sites came from `-H` or the embedded default (then `--on` may be omitted).
    implicit: bool,
}

fn read_polyfile(path: &Path) -> Result<Polyfile, CliError> {
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

fn polyfile_path(cli: &Cli) -> Option<PathBuf> {
    cli.file.clone().or_else(|| {
        let default = PathBuf::from("Polyfile.toml");
        default.exists().then_some(default)
    })
}

fn inventory(cli: &Cli) -> Result<Inventory, CliError> {
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
fn targets(inv: &Inventory, on: Option<&str>, command: &str) -> Result<Vec<String>, CliError> {
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
struct PolyfileRoles<'a> {
    cli: &'a Cli,
    polyfile: std::cell::OnceCell<Result<Polyfile, String>>,
}

impl<'a> PolyfileRoles<'a> {
    fn new(cli: &'a Cli) -> Self {
        PolyfileRoles {
            cli,
            polyfile: std::cell::OnceCell::new(),
        }
    }

    /// The Polyfile, if a group made it be read.
    fn loaded(&self) -> Option<&Polyfile> {
        self.polyfile.get().and_then(|r| r.as_ref().ok())
    }

    /// `pattern` expanded; a Polyfile that could not be read is reported as itself, not as
    /// an error inside the pattern.
    fn expand(&self, pattern: &str, what: &str) -> Result<Vec<String>, CliError> {
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
    }
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
    Ok(Settings {
        output: cli.output,
        shells: shell_settings(cli),
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
        Command::Check => check(&cli),
        Command::Hosts {
            action,
            patterns,
            separator,
        } => hosts(&cli, *action, patterns, separator),
        Command::Sites { args } => sites(&cli, args),
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
    };
    warn_unchecked_host_keys(cli, &plan);
    let settings = settings(cli, &plan)?;
    Ok(run::execute(plan, settings).await)
}

fn check(cli: &Cli) -> Result<u8, CliError> {
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

fn sites(cli: &Cli, args: &[String]) -> Result<u8, CliError> {
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
fn hosts(
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

fn print_sites(store: &SiteStore, names: &[String]) {
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
