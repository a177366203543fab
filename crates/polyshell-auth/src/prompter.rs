//! Where passwords come from: the terminal, a script (tests), or a non-interactive source.

use crate::console::Console;
use async_trait::async_trait;
use secrecy::SecretString;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What the agent asks for.
#[derive(Debug, Clone)]
pub struct PromptRequest {
    /// The agent's name.
    pub agent: String,
    /// The site that needs the password ("" when asked up front).
    pub site: String,
    /// 1 for the first answer, 2 after one was rejected, ...
    pub attempt: u32,
}

/// Why a prompter gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptError {
    /// The user aborted (Ctrl-C at the prompt).
    Aborted,
    /// There is no way to ask (no terminal, no source), with why.
    Unavailable(String),
}

/// A source of sudo passwords.
#[async_trait]
pub trait Prompter: Send + Sync {
    async fn ask(&self, request: &PromptRequest) -> Result<SecretString, PromptError>;

    /// Whether asking again after a rejection can give another answer. A fixed source
    /// (environment, file) cannot: one rejection is final.
    fn can_retry(&self) -> bool {
        true
    }
}

/// Answers from a list, in order, counting the questions; for tests. When the list runs
/// out it is unavailable.
pub struct ScriptedPrompter {
    answers: Mutex<VecDeque<SecretString>>,
    asked: AtomicU64,
}

impl ScriptedPrompter {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(answers: I) -> ScriptedPrompter {
        ScriptedPrompter {
            answers: Mutex::new(
                answers
                    .into_iter()
                    .map(|a| SecretString::from(a.into()))
                    .collect(),
            ),
            asked: AtomicU64::new(0),
        }
    }

    /// How many questions it was asked.
    pub fn asked(&self) -> u64 {
        self.asked.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Prompter for ScriptedPrompter {
    async fn ask(&self, _: &PromptRequest) -> Result<SecretString, PromptError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        // Yield, so that concurrent askers really overlap with this prompt.
        tokio::task::yield_now().await;
        let next = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        next.ok_or_else(|| {
            PromptError::Unavailable("the scripted prompter has no more answers".into())
        })
    }
}

/// A fixed password from the environment or a file, for automation. Never retried: a
/// rejected password fails at once instead of being sent again and again.
pub struct StaticPrompter {
    source: String,
    secret: Result<SecretString, String>,
}

impl StaticPrompter {
    /// The password in environment variable `var` (its value is never logged).
    pub fn from_env(var: &str) -> StaticPrompter {
        StaticPrompter {
            source: format!("environment variable {var}"),
            secret: std::env::var(var)
                .map(SecretString::from)
                .map_err(|_| format!("environment variable {var} is not set")),
        }
    }

    /// The first line of `path` (`/dev/fd/N` reads a file descriptor).
    pub fn from_file(path: &std::path::Path) -> StaticPrompter {
        let source = format!("file {}", path.display());
        let secret = std::fs::read_to_string(path)
            .map(|text| SecretString::from(text.lines().next().unwrap_or("").to_owned()))
            .map_err(|e| format!("cannot read {}: {e}", path.display()));
        StaticPrompter { source, secret }
    }

    /// Where the password comes from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[async_trait]
impl Prompter for StaticPrompter {
    async fn ask(&self, _: &PromptRequest) -> Result<SecretString, PromptError> {
        self.secret.clone().map_err(PromptError::Unavailable)
    }

    fn can_retry(&self) -> bool {
        false
    }
}

/// No way to ask: every request fails at once, saying how to provide a password. The
/// right prompter when stdin is not a terminal and no source was given: never blocks.
pub struct NoPrompter {
    pub hint: String,
}

#[async_trait]
impl Prompter for NoPrompter {
    async fn ask(&self, _: &PromptRequest) -> Result<SecretString, PromptError> {
        Err(PromptError::Unavailable(self.hint.clone()))
    }

    fn can_retry(&self) -> bool {
        false
    }
}

/// Asks on the controlling terminal (`/dev/tty`) with echo off, naming the agent and the
/// site. While the prompt is up, the console holds other output back. Ctrl-C aborts.
pub struct TerminalPrompter {
    console: Option<Console>,
}

impl TerminalPrompter {
    pub fn new(console: Option<Console>) -> TerminalPrompter {
        TerminalPrompter { console }
    }

    /// Whether there is a controlling terminal to ask on.
    pub fn available() -> bool {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .is_ok()
    }
}

#[async_trait]
impl Prompter for TerminalPrompter {
    async fn ask(&self, request: &PromptRequest) -> Result<SecretString, PromptError> {
        // One prompt on the terminal at a time: a second agent's waits for the first.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = ONE_AT_A_TIME.lock().await;
        let _hold = self.console.as_ref().map(Console::begin_prompt);
        let text = match (request.site.is_empty(), request.attempt) {
            (true, 1) => format!("[polyshell] sudo password for agent `{}`: ", request.agent),
            (true, n) => format!(
                "[polyshell] sudo password for agent `{}` (try {n}): ",
                request.agent
            ),
            (false, 1) => format!(
                "[polyshell] sudo password for agent `{}` (asked by {}): ",
                request.agent, request.site
            ),
            (false, n) => format!(
                "[polyshell] sudo password for agent `{}` (asked by {}, try {n}): ",
                request.agent, request.site
            ),
        };
        // The prompt starts on a cleared line: the progress line drawn there goes.
        let text = format!("\r\x1b[2K{text}");
        let tty = crate::tty::Tty::open()
            .map_err(|e| PromptError::Unavailable(format!("no terminal to ask on: {e}")))?;
        let restore = tty.restorer();
        let read = tokio::task::spawn_blocking(move || tty.read_secret(&text));
        tokio::select! {
            answer = read => match answer {
                Ok(Ok(secret)) => Ok(secret),
                Ok(Err(e)) => Err(PromptError::Unavailable(format!("reading the terminal failed: {e}"))),
                Err(_) => Err(PromptError::Aborted),
            },
            _ = tokio::signal::ctrl_c() => {
                restore.restore();
                Err(PromptError::Aborted)
            }
        }
    }
}
