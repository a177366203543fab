//! The `polyshell` command as a library: everything but `main`, so that tests and fuzzers
//! reach the Polyfile parser and the substitution rules directly.
//!
//! - [`polyfile`]: load and check a Polyfile (every error positioned).
//! - [`subst`]: `{...}` placeholders, checked and substituted as shell data.
//! - [`values`]: durations and counts from argv, checked (exit 2 when bad).
//! - [`locks`]: `[locks.NAME]` of the Polyfile; [`locks::register`] adds a lock kind.
//! - [`serve`]: `polyshell serve`, and [`serve::Feed`] for a program's own web app.
//! - [`cli::main`]: parse argv and run; returns the exit status ([`exit`]).
//!
//! ```
//! use polyshell_cli::polyfile;
//! use polyshell_sites::diag::Source;
//!
//! let source = Source::new("Polyfile.toml", "[sites.web1]\nhost = \"web1\"\n[[jobs.up]]\nroles = [\"web1\"]\nrun = \"uptime\"\n");
//! let pf = polyfile::load(&source).unwrap();
//! assert!(pf.jobs.contains_key("up"));
//! ```

#![warn(missing_docs)]

mod args;
pub mod cli;
mod complete;
mod dryrun;
pub mod exit;
mod info;
pub mod locks;
pub mod polyfile;
mod pump;
mod record;
mod report;
mod run;
pub mod serve;
mod shells;
mod steps;
pub mod subst;
mod targets;
pub mod values;
