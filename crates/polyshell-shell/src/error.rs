//! The errors a shell reports, each naming what failed and where.

/// Why a command could not be run. A command that ran and exited non-zero is not an error:
/// its [`ExitStatus`](crate::ExitStatus) says so.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The local shell program could not be started.
    #[error("cannot start local shell `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading the command's output or waiting for it failed.
    #[error("local command failed while running: {0}")]
    Io(#[from] std::io::Error),
}
