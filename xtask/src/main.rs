//! Chores for Polyshell's maintainers: the throwaway SSH test fleet, the test suite and CI.
//!
//! ```text
//! cargo xtask test [--sites N] [-- CARGO-TEST-ARGS...]
//! cargo xtask fleet up [--sites N] | fleet down | fleet status
//! ```

mod bench;
mod fleet;
mod fuzz;
mod packages;
mod proxy;
mod test;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  cargo xtask test [--sites N] [--rtt MS] [-- CARGO-TEST-ARGS...]
      install what is missing, bring a fleet up, run every test of the workspace
      (fleet tests included), bring the fleet down again
  cargo xtask fleet up [--sites N] [--rtt MS]
      start a throwaway fleet of sshd processes on loopback; with --rtt, every site sits
      behind a delay proxy adding MS milliseconds of round trip
  cargo xtask fleet down              stop exactly the processes `fleet up` started
  cargo xtask fleet status            show the fleet and check that every site answers
  cargo xtask bench [--sites N] [--runs K] [--rtt MS] [--peers] [--smoke] [--only LIST]
      polyshell vs OpenSSH (and with --peers pssh, pdsh, clustershell, bssh) on a fleet of
      N sites (default 100), MS ms of round trip to each (default 0); tables in
      target/bench/. LIST: scenarios to run, comma-separated, of fanout, bastion, batch,
      held, dead, transfer, persist, scheduler (default all)
  cargo xtask fuzz [--seconds N]      run each fuzz target for N seconds (default 60)
  cargo xtask man [DIR]               man pages from the CLI's definitions (default target/man)
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["test", rest @ ..] => {
            let (opts, passthrough) = split_passthrough(rest);
            let opts = parse_fleet_options(opts, test::DEFAULT_SITES)?;
            test::run(opts, passthrough)
        }
        ["bench", rest @ ..] => {
            let mut opts = bench::Options {
                sites: 100,
                runs: 3,
                peers: false,
                smoke: false,
                rtt_ms: 0,
                only: None,
            };
            let mut i = 0;
            while i < rest.len() {
                match rest[i] {
                    "--peers" => opts.peers = true,
                    "--smoke" => {
                        opts.smoke = true;
                        opts.sites = 10;
                        opts.runs = 1;
                    }
                    "--rtt" if i + 1 < rest.len() => {
                        opts.rtt_ms = rest[i + 1]
                            .parse()
                            .with_context(|| format!("--rtt {}", rest[i + 1]))?;
                        i += 1;
                    }
                    "--only" if i + 1 < rest.len() => {
                        let names: Vec<String> = rest[i + 1]
                            .split(',')
                            .map(|n| n.trim().to_owned())
                            .collect();
                        for name in &names {
                            if !bench::SCENARIOS.contains(&name.as_str()) {
                                bail!(
                                    "bench: no scenario `{name}` (of: {})",
                                    bench::SCENARIOS.join(", ")
                                );
                            }
                        }
                        opts.only = Some(names);
                        i += 1;
                    }
                    "--sites" | "--runs" if i + 1 < rest.len() => {
                        let n: usize = rest[i + 1]
                            .parse()
                            .with_context(|| format!("{} {}", rest[i], rest[i + 1]))?;
                        if rest[i] == "--sites" {
                            opts.sites = parse_sites(&["--sites", rest[i + 1]], n)?;
                        } else {
                            opts.runs = n.max(1);
                        }
                        i += 1;
                    }
                    other => bail!("bench: unexpected argument `{other}`\n{USAGE}"),
                }
                i += 1;
            }
            bench::run(opts)?;
            Ok(ExitCode::SUCCESS)
        }
        ["fuzz", rest @ ..] => {
            let seconds = match rest {
                [] => 60,
                ["--seconds", n] => n.parse().with_context(|| format!("--seconds {n}"))?,
                other => bail!("fuzz: unexpected arguments {other:?}\n{USAGE}"),
            };
            fuzz::run(seconds)?;
            Ok(ExitCode::SUCCESS)
        }
        ["fleet", "up", rest @ ..] => {
            let opts = parse_fleet_options(rest, fleet::DEFAULT_SITES)?;
            packages::ensure()?;
            let fleet = fleet::up(&fleet::dir(), opts)?;
            println!(
                "fleet up: {} sites, fleet file {}",
                fleet.sites.len(),
                fleet::file(&fleet::dir()).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        // Internal: the fleet's reaper, started by `fleet up` (see fleet.rs).
        ["fleet-reaper", rest @ ..] => {
            fleet::reaper(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        // Internal: the fleet's delay proxy, started by `fleet up --rtt` (see proxy.rs).
        ["fleet-proxy", rest @ ..] => {
            proxy::run(rest)?;
            Ok(ExitCode::SUCCESS)
        }
        ["man", rest @ ..] => {
            let dir = match rest {
                [] => workspace_root().join("target").join("man"),
                [dir] => std::path::PathBuf::from(dir),
                other => bail!("man: unexpected arguments {other:?}\n{USAGE}"),
            };
            let status = std::process::Command::new(env!("CARGO"))
                .args(["run", "-q", "-p", "polyshell-cli", "--example", "man", "--"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("generating the man pages failed ({status})");
            }
            println!(
                "man pages in {} (man -l {}/polyshell.1)",
                dir.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ["fleet", "down"] => {
            fleet::down(&fleet::dir())?;
            Ok(ExitCode::SUCCESS)
        }
        ["fleet", "status"] => Ok(if fleet::status(&fleet::dir())? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        ["help" | "--help" | "-h"] | [] => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprint!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

fn split_passthrough<'a>(args: &'a [&'a str]) -> (&'a [&'a str], &'a [&'a str]) {
    match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    }
}

fn parse_sites(args: &[&str], default: usize) -> Result<usize> {
    match args {
        [] => Ok(default),
        ["--sites", n] => {
            let n: usize = n
                .parse()
                .with_context(|| format!("--sites {n}: not a number"))?;
            if n == 0 || n > fleet::MAX_SITES {
                bail!("--sites {n}: choose 1 to {}", fleet::MAX_SITES);
            }
            Ok(n)
        }
        other => bail!("unexpected arguments {other:?}\n{USAGE}"),
    }
}

/// `[--sites N] [--rtt MS]`, in any order.
fn parse_fleet_options(args: &[&str], default_sites: usize) -> Result<fleet::Options> {
    let mut opts = fleet::Options {
        sites: default_sites,
        rtt_ms: 0,
    };
    let mut rest = args;
    while !rest.is_empty() {
        match rest {
            ["--sites", n, tail @ ..] => {
                opts.sites = parse_sites(&["--sites", n], default_sites)?;
                rest = tail;
            }
            ["--rtt", ms, tail @ ..] => {
                opts.rtt_ms = ms
                    .parse()
                    .ok()
                    .filter(|ms| *ms <= 10_000)
                    .with_context(|| format!("--rtt {ms}: milliseconds, 0 to 10000"))?;
                rest = tail;
            }
            other => bail!("unexpected arguments {other:?}\n{USAGE}"),
        }
    }
    Ok(opts)
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
