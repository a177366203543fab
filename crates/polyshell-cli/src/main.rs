//! `polyshell`: run jobs on many sites at once. Everything is in the library.

fn main() -> std::process::ExitCode {
    // Started as the connection keeper of `--persist`: serve, then exit.
    polyshell_shell::keeper::serve_if_asked();
    std::process::ExitCode::from(polyshell_cli::cli::main())
}
