//! The password agent: one sudo password cache shared by the sites configured to share it.

use crate::prompter::{PromptError, PromptKind, PromptRequest, Prompter};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// How many typed answers sudo may reject before the agent gives up.
pub const MAX_TRIES: u32 = 3;

/// A password handed out by the agent. Report back with [`PasswordAgent::accepted`] or
/// [`PasswordAgent::rejected`]; `generation` tells answers apart, so that twenty shells
/// rejecting the same answer drop it once.
#[derive(Clone)]
pub struct Password {
    /// The password.
    pub secret: SecretString,
    /// Which answer this is: each new answer (typed or set) gets the next number.
    pub generation: u64,
}

impl Password {
    /// The bytes sudo reads from its standard input: the password and a newline, in a buffer
    /// that is zeroed when dropped. The only place in Polyshell where a secret is exposed.
    pub fn sudo_answer(&self) -> Zeroizing<Vec<u8>> {
        let secret = self.secret.expose_secret().as_bytes();
        let mut answer = Zeroizing::new(Vec::with_capacity(secret.len() + 1));
        answer.extend_from_slice(secret);
        answer.push(b'\n');
        answer
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Password(generation {}, [REDACTED])", self.generation)
    }
}

/// Why no password could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("sudo rejected the password of agent `{agent}` {tries} times")]
    /// sudo rejected [`MAX_TRIES`] typed answers.
    Rejected {
        /// The password agent's name.
        agent: String,
        /// How many answers were rejected.
        tries: u32,
    },
    #[error("sudo rejected the password of agent `{agent}`, and its source cannot be asked again")]
    /// sudo rejected an answer from a source that cannot be asked again.
    RejectedNoRetry {
        /// The password agent's name.
        agent: String,
    },
    #[error("no sudo password for agent `{agent}`: {reason}")]
    /// There is no way to get a password (no terminal, no source).
    Unavailable {
        /// The password agent's name.
        agent: String,
        /// Why, and how to provide one.
        reason: String,
    },
    #[error("the password prompt of agent `{agent}` was aborted")]
    /// The operator aborted the prompt (Ctrl-C).
    Aborted {
        /// The password agent's name.
        agent: String,
    },
}

#[derive(Default)]
struct State {
    cached: Option<Password>,
    prompting: bool,
    generation: u64,
    /// Typed answers rejected since the last accepted one.
    rejected: u32,
    /// Once set, every request fails fast with it (until `reset`).
    failed: Option<AgentError>,
    prompts: u64,
}

/// A sudo password cache with Polyshell's rules:
/// - a cached password is handed out (tried once) before anyone is asked;
/// - while one shell prompts, every other shell that needs this agent waits for that answer;
/// - a rejected password is dropped once (not once per shell) and the user asked again, up
///   to [`MAX_TRIES`] answers; then every request fails with a clear error;
/// - a source that cannot be asked again (non-interactive) fails at its first rejection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use polyshell_auth::{PasswordAgent, ScriptedPrompter};
/// use std::sync::Arc;
///
/// let prompter = Arc::new(ScriptedPrompter::new(["s3cret"]));
/// let agent = PasswordAgent::new("ops", prompter.clone());
/// let first = agent.password("web01").await.unwrap();
/// let again = agent.password("web02").await.unwrap(); // cached: nobody asked
/// assert_eq!(first.generation, again.generation);
/// assert_eq!(prompter.asked(), 1);
/// # }
/// ```
pub struct PasswordAgent {
    name: String,
    prompter: Arc<dyn Prompter>,
    state: Mutex<State>,
    changed: Notify,
}

impl std::fmt::Debug for PasswordAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordAgent")
            .field("name", &self.name)
            .finish()
    }
}

impl PasswordAgent {
    /// An agent called `name` asking `prompter` for its password.
    pub fn new(name: &str, prompter: Arc<dyn Prompter>) -> PasswordAgent {
        PasswordAgent {
            name: name.to_owned(),
            prompter,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    /// The agent's name (what sites name in `password_agent`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (every
        // update is a plain assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times this agent has asked its prompter.
    pub fn prompts(&self) -> u64 {
        self.lock().prompts
    }

    /// Preloads a password (e.g. from a vault), as if the user had typed it.
    pub fn set(&self, secret: SecretString) {
        let mut state = self.lock();
        state.generation += 1;
        state.cached = Some(Password {
            secret,
            generation: state.generation,
        });
        state.failed = None;
        drop(state);
        self.changed.notify_waiters();
    }

    /// Forgets the cached password and any failure, so the next request asks again.
    pub fn reset(&self) {
        let mut state = self.lock();
        state.cached = None;
        state.failed = None;
        state.rejected = 0;
    }

    /// Asks now (e.g. before a run starts, like `-K`), unless a password is cached.
    pub async fn prompt_now(&self) -> Result<(), AgentError> {
        self.password("").await.map(|_| ())
    }

    /// The password for `site`: the cached one, the answer another shell is waiting for, or
    /// a new answer from the prompter.
    pub async fn password(&self, site: &str) -> Result<Password, AgentError> {
        loop {
            let waiting = {
                let mut state = self.lock();
                if let Some(err) = &state.failed {
                    return Err(err.clone());
                }
                if let Some(pw) = &state.cached {
                    return Ok(pw.clone());
                }
                if state.prompting {
                    // Register interest before releasing the lock: no lost wake-up.
                    let notified = self.changed.notified();
                    Some(notified)
                } else {
                    state.prompting = true;
                    state.prompts += 1;
                    None
                }
            };
            match waiting {
                Some(notified) => {
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check: the prompter may have finished between unlock and enable.
                    if self.settled() {
                        continue;
                    }
                    notified.await;
                }
                None => return self.ask(site).await,
            }
        }
    }

    fn settled(&self) -> bool {
        let state = self.lock();
        !state.prompting || state.cached.is_some() || state.failed.is_some()
    }

    async fn ask(&self, site: &str) -> Result<Password, AgentError> {
        let attempt = self.lock().rejected + 1;
        let request = PromptRequest {
            agent: self.name.clone(),
            site: site.to_owned(),
            attempt,
            kind: PromptKind::SudoPassword,
        };
        // If this future is dropped mid-prompt, the guard lets the waiters go on.
        let mut guard = PromptingGuard {
            agent: self,
            done: false,
        };
        let answer = self.prompter.ask(&request).await;
        guard.done = true;
        let mut state = self.lock();
        state.prompting = false;
        let result = match answer {
            Ok(secret) => {
                state.generation += 1;
                let pw = Password {
                    secret,
                    generation: state.generation,
                };
                state.cached = Some(pw.clone());
                Ok(pw)
            }
            Err(PromptError::Aborted) => {
                let err = AgentError::Aborted {
                    agent: self.name.clone(),
                };
                state.failed = Some(err.clone());
                Err(err)
            }
            Err(PromptError::Unavailable(reason)) => {
                let err = AgentError::Unavailable {
                    agent: self.name.clone(),
                    reason,
                };
                state.failed = Some(err.clone());
                Err(err)
            }
        };
        drop(state);
        self.changed.notify_waiters();
        result
    }

    /// sudo accepted `password`: the count of rejected answers starts over.
    pub fn accepted(&self, password: &Password) {
        let mut state = self.lock();
        if state
            .cached
            .as_ref()
            .is_some_and(|c| c.generation == password.generation)
        {
            state.rejected = 0;
        }
    }

    /// sudo rejected `password`. The first report of an answer drops it from the cache and
    /// counts it; later reports of the same answer change nothing.
    pub fn rejected(&self, password: &Password) {
        let mut state = self.lock();
        let current = state.cached.as_ref().map(|c| c.generation);
        if current != Some(password.generation) {
            return;
        }
        state.cached = None;
        state.rejected += 1;
        if !self.prompter.can_retry() {
            state.failed = Some(AgentError::RejectedNoRetry {
                agent: self.name.clone(),
            });
        } else if state.rejected >= MAX_TRIES {
            state.failed = Some(AgentError::Rejected {
                agent: self.name.clone(),
                tries: state.rejected,
            });
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

struct PromptingGuard<'a> {
    agent: &'a PasswordAgent,
    done: bool,
}

impl Drop for PromptingGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.agent.lock().prompting = false;
            self.agent.changed.notify_waiters();
        }
    }
}
