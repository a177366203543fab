//! Writes polyshell's man pages, generated from its clap definitions: `polyshell.1` and one
//! `polyshell-SUBCOMMAND.1` per subcommand, into the directory given (`cargo xtask man`).

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: man OUTPUT-DIRECTORY"),
    );
    std::fs::create_dir_all(&dir)?;
    clap_mangen::generate_to(polyshell_cli::cli::command(), &dir)?;
    Ok(())
}
