//! `polyshell`: run jobs on many sites at once. Parses argv and hands over to [`cli`].

mod cli;
mod exit;

fn main() -> std::process::ExitCode {
    cli::main()
}
