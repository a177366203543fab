//! The sudo password agent of Polyshell: one typed password serves every site configured to
//! share it.
//!
//! Planned here (see `ARCHITECTURE.md`): `PasswordAgent` (the shared cache and its rules),
//! the `Prompter` trait with terminal, scripted and non-interactive prompters, and the console
//! guard that holds output back while a prompt is on screen. Secrets are `secrecy` types and
//! are exposed at exactly one call, the one that hands them to sudo.
