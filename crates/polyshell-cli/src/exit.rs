//! The exit statuses of `polyshell`, in one place: scripts depend on them.

use std::process::ExitCode;

/// Every site succeeded.
pub const SUCCESS: u8 = 0;
/// At least one site failed.
pub const SITE_FAILED: u8 = 1;
/// The command line or the configuration is wrong; nothing ran.
pub const USAGE: u8 = 2;

pub fn code(status: u8) -> ExitCode {
    ExitCode::from(status)
}
