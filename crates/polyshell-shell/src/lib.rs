//! Shells for Polyshell: run commands on the local machine or on a remote host, and read
//! their exit status and output.
//!
//! A [`Shell`] is usable on its own, with no scheduler in sight:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), polyshell_shell::ShellError> {
//! use polyshell_shell::Shell;
//!
//! let out = Shell::local().run("echo hello").await?;
//! assert!(out.status.success());
//! assert_eq!(out.stdout_text(), "hello\n");
//! # Ok(())
//! # }
//! ```
//!
//! The SSH transport (libssh2 through `ssh2`, on blocking threads driven from tokio) is
//! planned in this crate next; see `ARCHITECTURE.md`.

mod error;
mod local;
mod output;

pub use error::ShellError;
pub use output::{ExitStatus, Output};

/// A shell on one site: where commands run.
#[derive(Debug, Clone)]
pub struct Shell {
    transport: Transport,
}

#[derive(Debug, Clone)]
enum Transport {
    Local(local::LocalShell),
}

impl Shell {
    /// A shell on this machine, running commands with `sh -c`.
    pub fn local() -> Shell {
        Shell {
            transport: Transport::Local(local::LocalShell::new("sh")),
        }
    }

    /// Runs `command` to its end and returns its exit status and captured output.
    pub async fn run(&self, command: &str) -> Result<Output, ShellError> {
        match &self.transport {
            Transport::Local(local) => local.run(command).await,
        }
    }
}
