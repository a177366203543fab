//! `polyshell`: run jobs on many sites at once. Everything is in the library.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(polyshell_cli::cli::main())
}
