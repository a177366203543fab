//! Where passwords come from: the terminal, a script (tests), or a non-interactive source.

use crate::console::Console;
use async_trait::async_trait;
use secrecy::SecretString;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PromptKind {
    /// A sudo password for the agent named in the request (the default).
    #[default]
    SudoPassword,
    /// The passphrase of the encrypted private key file `key` (shown as the user gave it).
    /// The passphrase of an encrypted private key file.
    KeyPassphrase {
        /// The key file, as the user named it.
        key: String,
    },
}

/// What the agent asks for.
#[derive(Debug, Clone, Default)]
pub struct PromptRequest {
    /// The agent's name (for a key passphrase: the key file).
    pub agent: String,
    /// The site that needs the password ("" when asked up front).
    pub site: String,
    /// 1 for the first answer, 2 after one was rejected, ...
    pub attempt: u32,
    /// A sudo password or a key's passphrase.
    pub kind: PromptKind,
}

impl PromptRequest {
    /// The question as a person reads it, without decoration: `sudo password for agent
    /// `ops` (asked by web01, try 2)`, `passphrase for key ~/.ssh/id_ed25519 (asked by web01)`.
    pub fn question(&self) -> String {
        let what = match &self.kind {
            PromptKind::SudoPassword => format!("sudo password for agent `{}`", self.agent),
            PromptKind::KeyPassphrase { key } => format!("passphrase for key {key}"),
        };
        let mut notes = Vec::new();
        if !self.site.is_empty() {
            notes.push(format!("asked by {}", self.site));
        }
        if self.attempt > 1 {
            notes.push(format!("try {}", self.attempt));
        }
        if notes.is_empty() {
            what
        } else {
            format!("{what} ({})", notes.join(", "))
        }
    }
}

/// Why a prompter gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// The user aborted (Ctrl-C at the prompt).
    #[error("the prompt was aborted")]
    Aborted,
    /// There is no way to ask (no terminal, no source), with why.
    #[error("{0}")]
    Unavailable(String),
}

/// A source of sudo passwords.
#[async_trait]
pub trait Prompter: Send + Sync {
    /// An answer to `request`, or why there is none.
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
    /// A prompter answering with `answers`, in order.
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
    /// What to do instead, said in the error (e.g. which variable to set).
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
    /// A prompter on `/dev/tty`; while it asks, `console` (if any) holds other output back.
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
        // The prompt starts on a cleared line: the progress line drawn there goes.
        let text = format!("\r\x1b[2K[polyshell] {}: ", request.question());
        let tty = crate::tty::Tty::open()
            .map_err(|e| PromptError::Unavailable(format!("no terminal to ask on: {e}")))?;
        let restore = tty.restorer();
        let console = self.console.clone();
        let read = tokio::task::spawn_blocking(move || {
            // What was queued for the terminal before the hold (a progress line) goes out
            // first: written after the prompt, it would erase it from the screen.
            if let Some(console) = &console {
                console.drain();
            }
            tty.read_secret(&text)
        });
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

/// Asks through an `SSH_ASKPASS` program, as OpenSSH does: the program gets the question as
/// its only argument and prints the answer on its standard output; a non-zero exit means the
/// user cancelled. See [`AskpassPrompter::from_env`] for when OpenSSH (and Polyshell) use one.
pub struct AskpassPrompter {
    program: std::path::PathBuf,
}

impl AskpassPrompter {
    /// A prompter running `program`.
    pub fn new(program: impl Into<std::path::PathBuf>) -> AskpassPrompter {
        AskpassPrompter {
            program: program.into(),
        }
    }

    /// The prompter OpenSSH's rules choose from the environment, if any: `SSH_ASKPASS` names
    /// the program; `SSH_ASKPASS_REQUIRE=force` always uses it, `prefer` uses it when a
    /// display is set (`DISPLAY` or `WAYLAND_DISPLAY`), `never` never does; otherwise it is
    /// used when there is no terminal and a display is set.
    pub fn from_env() -> Option<AskpassPrompter> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let program = var("SSH_ASKPASS")?;
        let display = var("DISPLAY").is_some() || var("WAYLAND_DISPLAY").is_some();
        let require = var("SSH_ASKPASS_REQUIRE")
            .map(|v| v.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let wanted = match require.as_str() {
            "force" => true,
            "prefer" => display,
            "never" => false,
            _ => display && !TerminalPrompter::available(),
        };
        wanted.then(|| AskpassPrompter::new(program))
    }

    /// The program, for messages.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }
}

#[async_trait]
impl Prompter for AskpassPrompter {
    async fn ask(&self, request: &PromptRequest) -> Result<SecretString, PromptError> {
        use secrecy::zeroize::Zeroizing;
        use std::io::Read;
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = ONE_AT_A_TIME.lock().await;
        let program = self.program.display().to_string();
        let mut child = std::process::Command::new(&self.program)
            .arg(format!("{}: ", request.question()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                PromptError::Unavailable(format!("cannot run SSH_ASKPASS {program}: {e}"))
            })?;
        let pid = child.id();
        let mut stdout = child.stdout.take();
        let read = tokio::task::spawn_blocking(move || {
            let mut answer = Zeroizing::new(Vec::new());
            if let Some(out) = stdout.as_mut() {
                out.read_to_end(&mut answer)?;
            }
            child.wait().map(|status| (status, answer))
        });
        tokio::select! {
            done = read => match done {
                Ok(Ok((status, answer))) if status.success() => {
                    let end = answer.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(answer.len());
                    let text = std::str::from_utf8(&answer[..end]).map_err(|_| {
                        PromptError::Unavailable(format!("SSH_ASKPASS {program} printed an answer that is not UTF-8"))
                    })?;
                    Ok(SecretString::from(text.to_owned()))
                }
                Ok(Ok(_)) => Err(PromptError::Aborted),
                Ok(Err(e)) => Err(PromptError::Unavailable(format!("SSH_ASKPASS {program}: {e}"))),
                Err(_) => Err(PromptError::Aborted),
            },
            _ = tokio::signal::ctrl_c() => {
                // SAFETY: plain kill(2) of the child we started (not yet reaped: the blocking
                // task reaps it once it exits).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                Err(PromptError::Aborted)
            }
        }
    }
}
