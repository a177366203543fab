//! sudo through the password agent: `sudo -S -p MARKER`, the marker detected on the output
//! (also when split across reads) and never shown, the password fed from the site's agent,
//! a rejected password reported to the agent and the command run again.

use crate::command::quote;
use crate::error::ErrorKind;
use crate::output::{Output, Stream};
use crate::process::{self, OutputHook, Process};
use crate::Command;
use async_trait::async_trait;
use polyshell_auth::{Password, PasswordAgent};
use std::sync::Arc;

/// How a sudo command is put together.
pub(crate) enum SudoForm {
    /// `Shell::sudo(script)`: `sudo -S -p PROMPT -- sh -c 'printf READY; script'`; the
    /// READY line says sudo let us through, so stdin can be closed (or fed) at once.
    Wrapped,
    /// `run("sudo ARGS...")` with sudo options of its own: only the prompt is added, and
    /// stdin stays open until sudo asks or the command ends.
    Args(String),
}

fn marker(kind: &str) -> String {
    format!("[polyshell-{kind}-{:016x}]", rand::random::<u64>())
}

/// `sudo ARGS` at the start of a script, if there is one: the ARGS.
pub(crate) fn leading_sudo(script: &str) -> Option<&str> {
    let trimmed = script.trim_start();
    trimmed
        .strip_prefix("sudo ")
        .or_else(|| trimmed.strip_prefix("sudo\t"))
}

pub(crate) async fn run(
    shell: &crate::Shell,
    agent: Arc<PasswordAgent>,
    command: Command,
    form: SudoForm,
) -> Result<Output, ErrorKind> {
    loop {
        let prompt = marker("sudo");
        let ready = marker("sudo-ok");
        let script = match &form {
            SudoForm::Wrapped => {
                let inner = format!(
                    "printf '%s\\n' {} >&2\n{}",
                    quote(&ready),
                    command.remote_script(None)
                );
                format!("sudo -S -p {} -- sh -c {}", quote(&prompt), quote(&inner))
            }
            SudoForm::Args(args) => format!("sudo -S -p {} {args}", quote(&prompt)),
        };
        // Environment and directory are inside the wrapped script; sudo resets them otherwise.
        let mut outer = Command::new(script)
            .capture_limit(command.capture_limit)
            .pty(command.pty);
        if let Some(t) = command.timeout {
            outer = outer.timeout(t);
        }
        if let SudoForm::Args(_) = form {
            outer.env = command.env.clone();
            outer.cwd = command.cwd.clone();
        }
        let process = shell.transport().spawn(&outer).await?;
        let mut hook = SudoHook {
            agent: agent.clone(),
            site: shell.site().to_owned(),
            prompt: prompt.into_bytes(),
            ready: matches!(form, SudoForm::Wrapped).then(|| ready.into_bytes()),
            input: command.stdin.clone(),
            released: None,
            held: [Vec::new(), Vec::new()],
            answered: None,
            passed: false,
            rejected: false,
            pty: command.pty,
        };
        let sink = shell.sink().map(|s| (s, shell.issuer()));
        let result = process::drive(process, &outer, sink, Some(&mut hook), true).await;
        if hook.rejected {
            if let Some(pw) = &hook.answered {
                agent.rejected(pw);
            }
            continue; // the agent decides whether to ask again or give up
        }
        if let Some(pw) = &hook.answered {
            agent.accepted(pw);
        }
        return result;
    }
}

struct SudoHook {
    agent: Arc<PasswordAgent>,
    site: String,
    prompt: Vec<u8>,
    ready: Option<Vec<u8>>,
    /// The command's own input, fed once sudo let us through.
    input: Option<Vec<u8>>,
    /// The input, once let through and not yet taken by `drive`.
    released: Option<Option<Vec<u8>>>,
    /// Bytes held back per stream because they may be the start of a marker.
    held: [Vec<u8>; 2],
    answered: Option<Password>,
    passed: bool,
    rejected: bool,
    pty: bool,
}

/// The longest suffix of `data` that is a proper prefix of `marker`.
fn partial_suffix(data: &[u8], marker: &[u8]) -> usize {
    (1..marker.len().min(data.len() + 1))
        .rev()
        .find(|&n| data.ends_with(&marker[..n]))
        .unwrap_or(0)
}

impl SudoHook {
    /// Lets the command's own input through: [`process::drive`] writes it (while reading
    /// output) and then closes stdin.
    fn feed_input(&mut self) {
        self.released = Some(self.input.take());
    }

    async fn on_prompt(&mut self, process: &mut dyn Process) -> Result<(), ErrorKind> {
        if let Some(pw) = &self.answered {
            // Asked again: the answer was wrong. Stop this attempt; `run` starts another.
            tracing::debug!(site = %self.site, agent = %self.agent.name(), generation = pw.generation, "sudo rejected the password");
            self.rejected = true;
            return Err(ErrorKind::Sudo("sudo rejected the password".into()));
        }
        let pw = self
            .agent
            .password(&self.site)
            .await
            .map_err(|e| ErrorKind::Sudo(e.to_string()))?;
        tracing::trace!(site = %self.site, agent = %self.agent.name(), ?pw, "sudo asks; answering from the agent");
        process.write_stdin(&pw.sudo_answer()).await?;
        self.answered = Some(pw);
        if self.ready.is_none() {
            self.feed_input();
        }
        Ok(())
    }
}

#[async_trait]
impl OutputHook for SudoHook {
    async fn filter(
        &mut self,
        stream: Stream,
        chunk: Vec<u8>,
        process: &mut dyn Process,
    ) -> Result<Vec<u8>, ErrorKind> {
        // sudo prompts on stderr; on a pty everything comes merged on stdout.
        let watched = if self.pty {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        if stream != watched || (self.passed && self.held[0].is_empty() && self.held[1].is_empty())
        {
            return Ok(chunk);
        }
        let slot = if stream == Stream::Stdout { 0 } else { 1 };
        let mut data = std::mem::take(&mut self.held[slot]);
        data.extend_from_slice(&chunk);
        let mut shown = Vec::with_capacity(data.len());
        loop {
            let prompt_at = memchr::memmem::find(&data, &self.prompt);
            let ready_at = self
                .ready
                .as_ref()
                .and_then(|r| memchr::memmem::find(&data, r));
            match (prompt_at, ready_at) {
                (Some(p), r) if r.is_none_or(|r| p < r) => {
                    shown.extend_from_slice(&data[..p]);
                    data.drain(..p + self.prompt.len());
                    self.on_prompt(process).await?;
                }
                (_, Some(r)) => {
                    shown.extend_from_slice(&data[..r]);
                    let len = self.ready.as_ref().map_or(0, Vec::len);
                    let mut end = r + len;
                    // The line end after the ready marker goes too.
                    if data.get(end) == Some(&b'\r') {
                        end += 1;
                    }
                    if data.get(end) == Some(&b'\n') {
                        end += 1;
                    }
                    data.drain(..end);
                    self.passed = true;
                    self.ready = None;
                    tracing::trace!(site = %self.site, "sudo let the command through");
                    self.feed_input();
                }
                _ => break,
            }
        }
        let keep = partial_suffix(&data, &self.prompt)
            .max(self.ready.as_ref().map_or(0, |r| partial_suffix(&data, r)));
        let split = data.len() - keep;
        shown.extend_from_slice(&data[..split]);
        self.held[slot] = data[split..].to_vec();
        Ok(shown)
    }

    fn finish(&mut self) -> Result<(Vec<u8>, Vec<u8>), ErrorKind> {
        let [out, err] = std::mem::take(&mut self.held);
        Ok((out, err))
    }

    fn release_input(&mut self) -> Option<Option<Vec<u8>>> {
        self.released.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_markers_are_held_back() {
        assert_eq!(partial_suffix(b"abc[poly", b"[polyshell]"), 5);
        assert_eq!(partial_suffix(b"abc", b"[polyshell]"), 0);
        assert_eq!(partial_suffix(b"[", b"[polyshell]"), 1);
        assert_eq!(leading_sudo("  sudo -u www ls"), Some("-u www ls"));
        assert_eq!(leading_sudo("sudoedit x"), None);
    }
}
