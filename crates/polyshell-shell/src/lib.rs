//! Shells for Polyshell: run commands on the local machine or on a remote host over SSH,
//! stream their output, and read their exit status and captured output.
//!
//! - [`Shell`]: one site's shell. [`Shell::local`] runs `sh -c` here; [`Shell::ssh`] and
//!   [`Shell::with_ssh`] run over SSH (libssh2, one reused connection per shell, concurrent
//!   commands multiplexed on it); [`Shell::external_ssh`] uses the system `ssh` client.
//! - [`Command`]: a script plus environment, directory, input, timeout, capture limit.
//! - [`Output`] / [`ExitStatus`]: what a finished command leaves.
//! - [`OutputSink`]: receives output lines while commands run, tagged with the shell's issuer.
//! - [`ShellError`]: why a command could not run, naming the site and the cause.
//!
//! In `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! polyshell-shell = "0.1"   # local shells, libssh2 and the system ssh
//! # or, with no libssh2/OpenSSL to build (local shells and the system ssh only):
//! # polyshell-shell = { version = "0.1", default-features = false }
//! tokio = { version = "1", features = ["macros", "rt"] }
//! ```
//!
//! A shell is usable on its own, with no scheduler in sight:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), polyshell_shell::ShellError> {
//! use polyshell_shell::Shell;
//!
//! let out = Shell::local().run("echo hello").await?;
//! assert!(out.status.success());
//! assert_eq!(out.stdout_text(), "hello\n");
//!
//! // A list of commands runs as one, joined with `&&`.
//! let out = Shell::local().run(["true", "echo second"]).await?;
//! assert_eq!(out.stdout_text(), "second\n");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod command;
mod error;
mod external;
#[cfg(feature = "ssh")]
pub mod keeper;
mod local;
mod output;
pub mod process;
#[cfg(feature = "ssh")]
mod ssh;
mod stream_transfer;
mod sudo;
mod terminations;
mod transfer;

pub use command::{quote, Command};
pub use error::{ErrorKind, ShellError};
pub use output::{
    signal_number, ExitStatus, Line, Output, OutputSink, Stream, DEFAULT_CAPTURE_LIMIT, MAX_LINE,
};
#[cfg(feature = "ssh")]
pub use ssh::{HostKeyPolicy, KeyPassphrases, SshOptions};
pub use terminations::flush_terminations;

use async_trait::async_trait;
use polyshell_auth::{NoPrompter, PasswordAgent, TerminalPrompter};
use process::Process;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// How a shell reaches its site. Implemented for local processes, libssh2 and the system
/// `ssh` client; implement it to run commands somewhere else (a container, a fake in tests).
#[async_trait]
pub trait Transport: Send + Sync {
    /// Starts `command`.
    async fn spawn(&self, command: &Command) -> Result<Box<dyn Process>, ErrorKind>;
    /// Connects ahead of the first command (a no-op where there is nothing to connect).
    async fn connect(&self) -> Result<(), ErrorKind>;
    /// Copies a local file or directory tree to the site (see [`Shell::upload`]).
    async fn upload(&self, local: &Path, remote: &str) -> Result<(), ErrorKind>;
    /// Copies a file or directory tree from the site (see [`Shell::download`]).
    async fn download(&self, remote: &str, local: &Path) -> Result<(), ErrorKind>;
    /// A short description for logs, e.g. `ssh web01`.
    fn describe(&self) -> String;
    /// Lets go of the connection (if any) once nothing uses it; the next command connects
    /// again. Frees a site's memory when a run is done with it.
    async fn disconnect(&self) {}
}

/// A shell on one site: where commands run. Clones share the transport (and so the SSH
/// connection); [`with_issuer`](Shell::with_issuer) and [`with_sink`](Shell::with_sink) make
/// such clones with their own tag and output destination.
#[derive(Clone)]
pub struct Shell {
    site: Arc<str>,
    issuer: Arc<str>,
    transport: Arc<dyn Transport>,
    sink: Option<Arc<dyn OutputSink>>,
    /// The sudo password agent, made on first use when none was given.
    agent: Arc<OnceLock<Arc<PasswordAgent>>>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("site", &self.site)
            .field("issuer", &self.issuer)
            .field("transport", &self.transport.describe())
            .finish()
    }
}

struct LocalTransport {
    program: String,
}

#[async_trait]
impl Transport for LocalTransport {
    async fn spawn(&self, command: &Command) -> Result<Box<dyn Process>, ErrorKind> {
        // Environment and directory are set up by the script, exactly as on a remote site,
        // so that a missing directory fails the same way everywhere.
        let args = vec!["-c".to_owned(), command.remote_script(None)];
        Ok(Box::new(local::spawn(&self.program, &args)?))
    }

    async fn connect(&self) -> Result<(), ErrorKind> {
        Ok(())
    }

    async fn upload(&self, local: &Path, remote: &str) -> Result<(), ErrorKind> {
        transfer::copy(local, &transfer::site_path(remote)).await
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<(), ErrorKind> {
        transfer::copy(&transfer::site_path(remote), local).await
    }

    fn describe(&self) -> String {
        format!("local {}", self.program)
    }
}

impl Shell {
    /// A shell on this machine, running commands with `sh -c`.
    pub fn local() -> Shell {
        Shell::local_with("sh")
    }

    /// A shell on this machine running commands with `program -c` (a site's `sh`).
    pub fn local_with(program: &str) -> Shell {
        Shell::with_transport(
            "local",
            Arc::new(LocalTransport {
                program: program.to_owned(),
            }),
        )
    }

    /// An SSH shell to `host` (a host name or an ssh_config alias), configured by
    /// `~/.ssh/config`. Connects at the first command. (Cargo feature `ssh`, on by default.)
    #[cfg(feature = "ssh")]
    pub fn ssh(host: &str) -> Shell {
        Shell::with_ssh(SshOptions::new(host))
    }

    /// An SSH shell with explicit options (which win over ssh_config). (Cargo feature `ssh`.)
    #[cfg(feature = "ssh")]
    pub fn with_ssh(options: SshOptions) -> Shell {
        let site = options.host.clone();
        Shell::with_transport(&site, Arc::new(ssh::SshTransport::new(options)))
    }

    /// An SSH shell whose connection is kept by the user's connection keeper: it stays open
    /// after this process ends, and the next process's shell for the same site uses it with
    /// no handshake (see [`keeper`]). (Cargo feature `ssh`.)
    #[cfg(feature = "ssh")]
    pub fn with_ssh_kept(options: SshOptions, keeper: &Arc<keeper::Keeper>) -> Shell {
        let site = options.host.clone();
        Shell::with_transport(
            &site,
            Arc::new(keeper::KeptTransport::new(options, keeper.clone())),
        )
    }

    /// A shell that runs each command through the system OpenSSH client:
    /// `program args... HOST -- SCRIPT`.
    pub fn external_ssh(program: &str, args: Vec<String>, host: &str) -> Shell {
        Shell::with_transport(
            host,
            Arc::new(external::ExternalSsh::new(program, args, host)),
        )
    }

    /// A shell over any [`Transport`].
    pub fn with_transport(site: &str, transport: Arc<dyn Transport>) -> Shell {
        Shell {
            site: site.into(),
            issuer: site.into(),
            transport,
            sink: None,
            agent: Arc::default(),
        }
    }

    /// The same shell (same connection) taking sudo passwords from `agent`, which other
    /// shells may share: one answer then serves them all.
    pub fn with_password_agent(mut self, agent: Arc<PasswordAgent>) -> Shell {
        let cell = OnceLock::new();
        let _ = cell.set(agent);
        self.agent = Arc::new(cell);
        self
    }

    /// The shell's password agent. A shell given none has its own, asking on the terminal
    /// (or, with no terminal, failing at once with a hint).
    pub fn password_agent(&self) -> Arc<PasswordAgent> {
        self.agent
            .get_or_init(|| {
                let prompter: Arc<dyn polyshell_auth::Prompter> = if TerminalPrompter::available() {
                    Arc::new(TerminalPrompter::new(None))
                } else {
                    Arc::new(NoPrompter {
                        hint: "there is no terminal to ask on; give the shell a password agent"
                            .into(),
                    })
                };
                Arc::new(PasswordAgent::new(&self.site, prompter))
            })
            .clone()
    }

    /// Runs `command` as root through sudo, answering sudo's password prompt from the
    /// shell's password agent (asked once for all the shells sharing it; a rejected answer
    /// is asked again, three tries). The prompt never shows in the output.
    pub async fn sudo(&self, command: impl Into<Command>) -> Result<Output, ShellError> {
        let command = command.into();
        self.check(&command)?;
        sudo::run(
            self,
            self.password_agent(),
            command,
            sudo::SudoForm::Wrapped,
        )
        .await
        .map_err(|k| self.error(k))
    }

    /// The same shell (same connection) with another name for its site in errors.
    pub fn named(mut self, site: &str) -> Shell {
        self.site = site.into();
        if self.sink.is_none() {
            self.issuer = site.into();
        }
        self
    }

    /// The same shell (same connection) tagging its output with `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Shell {
        self.issuer = issuer.into();
        self
    }

    /// The same shell (same connection) streaming output lines to `sink`.
    pub fn with_sink(mut self, sink: Arc<dyn OutputSink>) -> Shell {
        self.sink = Some(sink);
        self
    }

    /// The site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The tag output lines are reported under (`[ACTION-ID] site`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where the shell's output lines go, if anywhere.
    pub fn sink(&self) -> Option<&Arc<dyn OutputSink>> {
        self.sink.as_ref()
    }

    /// The shell's transport (to run a [`Process`] by hand, as `sudo` does).
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    fn error(&self, kind: ErrorKind) -> ShellError {
        ShellError::new(&*self.site, kind)
    }

    /// Closes the shell's connection once no command of it runs any more (clones share it);
    /// a later command connects again.
    pub async fn disconnect(&self) {
        self.transport.disconnect().await
    }

    /// Connects now rather than at the first command.
    pub async fn connect(&self) -> Result<(), ShellError> {
        self.transport.connect().await.map_err(|k| self.error(k))
    }

    /// Runs a command to its end: exit status and captured output. Output lines stream to
    /// the sink while it runs. Cancelling the future terminates the command. A `sudo` in the
    /// script gets [`sudo`](Shell::sudo)'s password handling and elevates just what follows
    /// it (in `sudo a && b`, only `a`); a script with input may run sudo only at its start.
    pub async fn run(&self, command: impl Into<Command>) -> Result<Output, ShellError> {
        let command = command.into();
        self.check(&command)?;
        if let Some(form) = sudo::form_of(&command.script) {
            let command = match form {
                // `sudo CMD` alone: CMD wrapped, as `Shell::sudo(CMD)`.
                sudo::SudoForm::Wrapped => {
                    let inner = sudo::leading_sudo(&command.script).unwrap_or_default();
                    let inner = inner.to_owned();
                    command.with_script(inner)
                }
                sudo::SudoForm::Inline => command,
            };
            return sudo::run(self, self.password_agent(), command, form)
                .await
                .map_err(|k| self.error(k));
        }
        let mut command = command;
        // `drive` closes a command's input at once when it has none.
        command.input_closed = command.stdin.is_none();
        let process = self
            .transport
            .spawn(&command)
            .await
            .map_err(|k| self.error(k))?;
        let sink = self.sink.as_ref().map(|s| (s, &*self.issuer));
        process::drive(process, &command, sink, None, false)
            .await
            .map_err(|k| self.error(k))
    }

    /// Starts a command and hands back the running [`Process`], for callers that talk to
    /// it (write its input, watch its stderr) while it runs.
    pub async fn spawn(&self, command: &Command) -> Result<Box<dyn Process>, ShellError> {
        self.check(command)?;
        self.transport
            .spawn(command)
            .await
            .map_err(|k| self.error(k))
    }

    fn check(&self, command: &Command) -> Result<(), ShellError> {
        let bad = command.env.iter().find(|(k, _)| {
            k.is_empty()
                || k.starts_with(|c: char| c.is_ascii_digit())
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match bad {
            Some((k, _)) => Err(self.error(ErrorKind::EnvName(k.clone()))),
            None => Ok(()),
        }
    }

    /// Copies a local file or directory to the site. A directory uploaded to `remote`
    /// makes `remote` a copy of it (created with missing parents; existing files
    /// overwritten); a file goes to `remote`, or into it when it is a directory. Modes are kept.
    ///
    /// `local` is a path of this process, relative to its working directory; `~` is not
    /// expanded here (a program does it; the CLI does). `remote` is relative to the login
    /// directory on the site, and `~` or `~/...` names it; on a local shell, the home
    /// directory.
    pub async fn upload(&self, local: impl AsRef<Path>, remote: &str) -> Result<(), ShellError> {
        self.transport
            .upload(local.as_ref(), remote)
            .await
            .map_err(|k| self.error(k))
    }

    /// Copies a file or directory from the site, by the same rule as [`upload`](Shell::upload).
    pub async fn download(&self, remote: &str, local: impl AsRef<Path>) -> Result<(), ShellError> {
        self.transport
            .download(remote, local.as_ref())
            .await
            .map_err(|k| self.error(k))
    }
}
