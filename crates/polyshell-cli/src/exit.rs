//! The exit statuses of `polyshell`, and the one place errors become messages and statuses.

/// Every site succeeded.
pub const SUCCESS: u8 = 0;
/// At least one site failed (or the run was stopped).
pub const SITE_FAILED: u8 = 1;
/// The command line or the configuration is wrong; nothing ran.
pub const USAGE: u8 = 2;

/// An error that ends `polyshell` before or instead of a run: what to print, and the exit
/// status (2 for a usage or configuration error).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// The process's exit status.
    pub status: u8,
    /// What the operator reads (already naming what and where).
    pub message: String,
}

impl CliError {
    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            status: USAGE,
            message: message.into(),
        }
    }
}
