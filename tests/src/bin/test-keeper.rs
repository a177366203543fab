//! A program of the tests' own that becomes the connection keeper, as any program using
//! `polyshell_shell::keeper` does: `serve_if_asked` first thing in `main`.

fn main() {
    polyshell_shell::keeper::serve_if_asked();
    eprintln!("test-keeper: started without POLYSHELL_KEEPER_SERVE; it only runs as a keeper");
    std::process::exit(2);
}
