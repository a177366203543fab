//! `polyshell`: run jobs on many sites at once. Parses argv and hands over to [`cli`].

mod cli;
mod exit;
mod polyfile;
mod report;
mod run;
mod shells;
mod steps;
mod subst;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cli::main())
}
