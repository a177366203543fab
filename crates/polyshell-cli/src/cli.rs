//! The command line: argument parsing and dispatch to the commands.

use crate::exit;
use clap::{Parser, Subcommand};
use polyshell_shell::Shell;
use std::io::Write;
use std::process::ExitCode;

/// Run jobs on many sites at once, over local shells and SSH.
#[derive(Debug, Parser)]
#[command(name = "polyshell", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an ad hoc command.
    ///
    /// Example: polyshell run -- 'echo hello from $(hostname)'
    Run {
        /// The command, run by the site's shell (`sh -c`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return exit::code(if err.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("polyshell: cannot start the async runtime: {err}");
            return exit::code(exit::SITE_FAILED);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { command } => run_local(&command.join(" ")).await,
        }
    })
}

async fn run_local(command: &str) -> ExitCode {
    match Shell::local().run(command).await {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            let mut stderr = std::io::stderr().lock();
            let _ = stdout.write_all(&prefixed("local | ", &out.stdout));
            let _ = stderr.write_all(&prefixed("local ! ", &out.stderr));
            if out.status.success() {
                exit::code(exit::SUCCESS)
            } else {
                eprintln!("polyshell: local: {}", out.status);
                exit::code(exit::SITE_FAILED)
            }
        }
        Err(err) => {
            eprintln!("polyshell: local: {err}");
            exit::code(exit::SITE_FAILED)
        }
    }
}

fn prefixed(prefix: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}
