//! The sudo password agent of Polyshell: one typed password serves every site configured to
//! share it.
//!
//! - [`PasswordAgent`]: the shared cache and its rules (tried once, asked once while others
//!   wait, a rejection dropped once, three tries).
//! - [`Prompter`]: where answers come from — [`TerminalPrompter`] (silent, on `/dev/tty`),
//!   [`ScriptedPrompter`] (tests), [`StaticPrompter`] (environment or file, never retried),
//!   [`NoPrompter`] (fails fast, for runs with no terminal and no source), [`AskpassPrompter`]
//!   (an `SSH_ASKPASS` program, by OpenSSH's rules).
//! - The same prompters ask for the passphrases of encrypted SSH keys ([`PromptKind`]);
//!   `polyshell-shell`'s `KeyPassphrases` keeps each answer for the run.
//! - [`Console`]: holds live output back while a prompt is on screen.
//!
//! Secrets are [`secrecy::SecretString`]s, zeroized on drop. They are exposed at exactly one
//! call, [`Password::sudo_answer`], whose zeroizing buffer the sudo helper of
//! `polyshell-shell` writes to sudo's standard input.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use polyshell_auth::{PasswordAgent, ScriptedPrompter};
//! use std::sync::Arc;
//!
//! let prompter = Arc::new(ScriptedPrompter::new(["wrong", "right"]));
//! let agent = PasswordAgent::new("default", prompter.clone());
//! let first = agent.password("db1").await.unwrap();
//! agent.rejected(&first); // sudo said no
//! agent.rejected(&first); // another site said no to the same answer: counted once
//! let second = agent.password("db2").await.unwrap();
//! assert_ne!(first.generation, second.generation);
//! assert_eq!(prompter.asked(), 2);
//! # }
//! ```

#![warn(missing_docs)]

mod agent;
mod console;
mod prompter;
mod tty;

pub use agent::{AgentError, Password, PasswordAgent, MAX_TRIES};
pub use console::{Console, ConsoleStream, PromptHold};
pub use prompter::{
    AskpassPrompter, NoPrompter, PromptError, PromptKind, PromptRequest, Prompter,
    ScriptedPrompter, StaticPrompter, TerminalPrompter,
};
pub use secrecy::SecretString;
