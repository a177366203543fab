//! The command line as clap parses it: global options, subcommands, their arguments.

use crate::complete;
use crate::report::OutputMode;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::ArgValueCompleter;
use std::path::PathBuf;
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
pub(crate) struct Cli {
    /// The Polyfile (default: ./Polyfile.toml when it exists; otherwise the one local site).
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub(crate) file: Option<PathBuf>,
    /// Target hosts without a Polyfile: a host pattern, e.g. `db1,web[01-03]`,
    /// `web[1-20]!web7`; `@ROLE` takes a role's sites from the Polyfile (`@web&@eu`).
    #[arg(
        short = 'H',
        long = "hosts",
        global = true,
        help_heading = "Global options",
        value_name = "HOSTS"
    )]
    pub(crate) hosts: Option<String>,
    /// At most N sites busy at once (N ≥ 1).
    #[arg(long, global = true, help_heading = "Global options", value_name = "N", value_parser = crate::values::positive)]
    pub(crate) fanout: Option<usize>,
    /// Terminate any command that runs longer than S seconds (its whole process group);
    /// also `500ms`, `10m`, `2h`.
    #[arg(long, global = true, help_heading = "Global options", value_name = "S", value_parser = crate::values::duration)]
    pub(crate) timeout: Option<Duration>,
    /// Give up on a site that does not complete connecting within S seconds (default 10).
    #[arg(long = "connect-timeout", global = true, help_heading = "Global options", value_name = "S", value_parser = crate::values::duration)]
    pub(crate) connect_timeout: Option<Duration>,
    /// Keep the run's SSH connections open for DURATION of idleness (`10m`, `1h`), in a
    /// per-user keeper process: the next invocation on the same sites skips every handshake.
    /// Also POLYSHELL_PERSIST, or `persist` in the Polyfile's `[settings]`; `0` keeps nothing.
    #[arg(long, global = true, help_heading = "Global options", value_name = "DURATION", value_parser = crate::values::duration_or_zero)]
    pub(crate) persist: Option<Duration>,
    /// How output is shown.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value = "stream"
    )]
    pub(crate) output: OutputMode,
    /// Ask for the sudo password once, before anything runs.
    #[arg(
        short = 'K',
        long = "ask-sudo-pass",
        global = true,
        help_heading = "Global options"
    )]
    pub(crate) ask_sudo_pass: bool,
    /// Read the sudo password from the first line of FILE (or set POLYSHELL_SUDO_PASSWORD).
    #[arg(
        long = "sudo-password-file",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub(crate) sudo_password_file: Option<PathBuf>,
    /// Host key checking: strict (default), accept-new (record unknown keys), off.
    #[arg(
        long = "known-hosts",
        global = true,
        help_heading = "Global options",
        value_enum
    )]
    pub(crate) known_hosts: Option<KnownHosts>,
    /// An ssh_config to read instead of ~/.ssh/config.
    #[arg(
        long = "ssh-config",
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub(crate) ssh_config: Option<PathBuf>,
    /// More detail: -v shows `starting job` lines, -vv debug messages and logs, -vvv traces.
    #[arg(short = 'v', action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub(crate) verbose: u8,
    /// Resolve everything and print what would run (sites, schedules, rails, every step's
    /// command per site); connect nowhere, run nothing.
    #[arg(long = "dry-run", global = true, help_heading = "Global options")]
    pub(crate) dry_run: bool,
    /// Do not record this run in the run ledger (`polyshell runs`).
    #[arg(long = "no-record", global = true, help_heading = "Global options")]
    pub(crate) no_record: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
    /// The arguments after the program's name, as the ledger records them (a rerun's are
    /// those of the run it repeats).
    #[arg(skip)]
    pub(crate) argv: Vec<String>,
    /// Set by `rerun`: only these sites.
    #[arg(skip)]
    pub(crate) only: Option<Vec<String>>,
    /// Set by `rerun`: the run repeated.
    #[arg(skip)]
    pub(crate) rerun_of: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KnownHosts {
    Strict,
    AcceptNew,
    Off,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// List the SSH connections kept by `--persist` (site, host, age, idle, in use), or
    /// close them.
    #[command(
        after_help = "Examples:\n  polyshell connections\n  polyshell connections close 'web*'\n  polyshell connections close          every kept connection; the keeper exits"
    )]
    Connections {
        #[command(subcommand)]
        action: Option<ConnectionsAction>,
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

/// What `polyshell connections` does.
#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionsAction {
    /// Close kept connections: those whose site or host matches TARGETS (names, `*` and `?`
    /// wildcards, `web[01-20]` ranges, comma-separated), or all of them.
    Close {
        #[arg(value_name = "TARGETS")]
        targets: Option<String>,
    },
}

/// What `polyshell hosts` does with its patterns.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum HostsAction {
    Expand,
    Fold,
    Count,
}
