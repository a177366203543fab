//! `cargo xtask test`: every test of the workspace, the fleet tests included.

use crate::{fleet, packages};
use anyhow::{Context, Result};
use std::process::{Command, ExitCode};

/// The fan-out tests need 500 sites; starting them takes about a second.
pub const DEFAULT_SITES: usize = 500;

extern "C" fn ignore_interrupt(_: libc::c_int) {}

pub fn run(opts: fleet::Options, cargo_test_args: &[&str]) -> Result<ExitCode> {
    packages::ensure()?;
    let dir = fleet::dir();
    // Build first, so that compile errors show before a fleet starts and the fleet is up
    // only as long as the tests need it.
    let built = cargo_test(&["--no-run"], &[])?;
    if !built.success() {
        return Ok(ExitCode::FAILURE);
    }
    let fleet = fleet::up(&dir, opts)?;
    println!(
        "xtask: fleet up with {} sites; running the tests",
        fleet.sites.len()
    );

    // Ctrl-C reaches cargo and the tests through the terminal; xtask itself stays to take the
    // fleet down. A handler (not SIG_IGN) so that children still get the default action.
    // SAFETY: the handler does nothing, so it is trivially async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            ignore_interrupt as *const () as libc::sighandler_t,
        );
    }
    let report = conformance_report();
    let _ = std::fs::remove_file(&report);
    let tested = cargo_test(&[], cargo_test_args);
    let downed = fleet::down(&dir);
    let tested = tested?;
    downed?;
    // The conformance suite's table (behaviour x transport x login shell), last, where a
    // reader of the log looks first.
    match std::fs::read_to_string(&report) {
        Ok(table) => println!(
            "\nxtask: transport conformance ({}):\n{table}",
            report.display()
        ),
        Err(_) => println!(
            "\nxtask: no conformance table at {} (the suite did not run)",
            report.display()
        ),
    }
    if tested.success() {
        println!("xtask: all tests passed, fleet tests included");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask: tests failed ({tested})");
        Ok(ExitCode::FAILURE)
    }
}

/// Where the conformance suite writes its table.
fn conformance_report() -> std::path::PathBuf {
    crate::workspace_root()
        .join("target")
        .join("conformance.txt")
}

fn cargo_test(cargo_args: &[&str], test_args: &[&str]) -> Result<std::process::ExitStatus> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(crate::workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(cargo_args)
        .args(["--", "--include-ignored"])
        .args(test_args)
        .env(polyshell_tests::FLEET_ENV, fleet::file(&fleet::dir()))
        .env("POLYSHELL_CONFORMANCE_REPORT", conformance_report())
        // Runs the tests make are recorded in the build's scratch space, not in a home.
        .env(
            "POLYSHELL_RUNS_DIR",
            crate::workspace_root().join("target").join("test-runs"),
        )
        .status()
        .context("running cargo test")
}
