//! sudo through the password agent: `sudo -S -p MARKER`, the marker detected on the output
//! (also when split across reads) and never shown, the password fed from the site's agent.
//!
//! Two forms. [`Shell::sudo`](crate::Shell::sudo) (and a script that is `sudo` and one simple
//! command) wraps the command: `sudo -S -p MARKER -- sh -c 'printf READY; script'`; READY says
//! sudo let it through, so its input can follow, and a rejected password ends the attempt
//! and runs the command again. A `sudo` anywhere else in a script (`cd /srv && sudo make
//! install`, `sudo a && b`) is a shell function that runs the real sudo with a marker of its
//! own, ending in sudo's pid: exactly what the user wrote is elevated, each invocation is
//! answered, and a second prompt of the same invocation is a rejected password, answered
//! again from the agent (sudo itself counts the tries).

use crate::command::quote;
use crate::error::ErrorKind;
use crate::output::{Output, Stream};
use crate::process::{self, OutputHook, Process};
use crate::Command;
use async_trait::async_trait;
use polyshell_auth::{Password, PasswordAgent};
use std::sync::Arc;

/// How a sudo command is put together.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SudoForm {
    /// The whole command under one sudo: `sudo -S -p PROMPT -- sh -c 'printf READY; script'`.
    Wrapped,
    /// The script as written, with `sudo` a shell function adding the prompt marker.
    Inline,
}

fn marker(kind: &str) -> String {
    format!("[polyshell-{kind}-{:016x}", rand::random::<u64>())
}

/// The form `script` needs when run as it is (not through [`Shell::sudo`](crate::Shell::sudo)),
/// or `None` if no `sudo` stands where the shell would run it as a command.
///
/// `sudo` followed by one simple command (no sudo options, no shell operators, no
/// expansions) is wrapped, so its input works; every other script that runs `sudo` goes
/// inline. `sudo` run by another program (`xargs sudo`, `env sudo`) is not seen.
pub(crate) fn form_of(script: &str) -> Option<SudoForm> {
    if let Some(rest) = leading_sudo(script) {
        let simple = !rest.trim_start().starts_with('-')
            && !rest.trim().is_empty()
            && !rest.contains([';', '&', '|', '<', '>', '(', ')', '$', '`', '\n', '{', '}']);
        if simple {
            return Some(SudoForm::Wrapped);
        }
    }
    runs_sudo(script).then_some(SudoForm::Inline)
}

/// `sudo ARGS` at the start of a script, if there is one: the ARGS.
pub(crate) fn leading_sudo(script: &str) -> Option<&str> {
    let trimmed = script.trim_start();
    trimmed
        .strip_prefix("sudo ")
        .or_else(|| trimmed.strip_prefix("sudo\t"))
}

/// Whether the word `sudo` stands in `script` where a shell reads a command name: at the
/// start, after an operator (`;`, `&`, `|`, `(`, `{`, `!`, a newline, a backquote) or after a
/// keyword that a command follows (`if`, `then`, `do`, ...). It may say yes for a `sudo`
/// inside quotes; that only defines a function the script never calls.
pub(crate) fn runs_sudo(script: &str) -> bool {
    const KEYWORDS: &[&str] = &["if", "then", "else", "elif", "do", "while", "until", "time"];
    let bytes = script.as_bytes();
    let mut from = 0;
    while let Some(at) = script[from..].find("sudo").map(|i| i + from) {
        from = at + 4;
        let after_ok = bytes
            .get(at + 4)
            .is_none_or(|&b| b == b' ' || b == b'\t' || b == b'\n' || b == b';');
        if !after_ok {
            continue;
        }
        let before = script[..at].trim_end_matches([' ', '\t']);
        let command_position = match before.as_bytes().last() {
            None => true,
            Some(b';' | b'&' | b'|' | b'(' | b'{' | b'!' | b'\n' | b'`') => true,
            // `xsudo`, `visudo`: part of another word.
            Some(_) if before.len() == at => false,
            Some(_) => {
                let word_start = before
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |i| i + 1);
                let word = &before[word_start..];
                let boundary = before.as_bytes()[..word_start].last().is_none_or(|&b| {
                    matches!(b, b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b'{')
                });
                boundary && KEYWORDS.contains(&word)
            }
        };
        if command_position {
            return true;
        }
    }
    false
}

/// The shell function that makes every `sudo` of a script prompt with `prefix`, followed
/// by the pid of that sudo process and `]`: `sh -c 'exec sudo ...'` keeps the pid, so each
/// invocation has its own marker, in subshells too.
fn inline_function(prefix: &str) -> String {
    format!(
        "sudo() {{ /bin/sh -c 'exec sudo -S -p \"$0$$]\" \"$@\"' {} \"$@\"; }}\n",
        quote(prefix)
    )
}

pub(crate) async fn run(
    shell: &crate::Shell,
    agent: Arc<PasswordAgent>,
    command: Command,
    form: SudoForm,
) -> Result<Output, ErrorKind> {
    if form == SudoForm::Inline && command.stdin.is_some() {
        return Err(ErrorKind::SudoWithInput);
    }
    loop {
        let prefix = marker("sudo");
        let ready = format!("{}]", marker("sudo-ok"));
        let outer = match form {
            SudoForm::Wrapped => {
                let inner = format!(
                    "printf '%s\\n' {} >&2\n{}",
                    quote(&ready),
                    command.remote_script(None)
                );
                let prompt = format!("{prefix}0]");
                // Environment and directory are inside the wrapped script; sudo resets them.
                let mut outer = Command::new(format!(
                    "sudo -S -p {} -- sh -c {}",
                    quote(&prompt),
                    quote(&inner)
                ))
                .capture_limit(command.capture_limit)
                .pty(command.pty);
                outer.timeout = command.timeout;
                outer
            }
            SudoForm::Inline => {
                let script = format!("{}{}", inline_function(&prefix), command.script);
                command.clone().with_script(script)
            }
        };
        let process = shell.transport().spawn(&outer).await?;
        let mut hook = SudoHook {
            agent: agent.clone(),
            site: shell.site().to_owned(),
            form,
            prefix: prefix.into_bytes(),
            ready: (form == SudoForm::Wrapped).then(|| ready.into_bytes()),
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
            if let Some((_, pw)) = &hook.answered {
                agent.rejected(pw);
            }
            continue; // the agent decides whether to ask again or give up
        }
        if let Some((_, pw)) = &hook.answered {
            let let_through = match form {
                SudoForm::Wrapped => hook.passed,
                SudoForm::Inline => result.as_ref().is_ok_and(|o| o.status.success()),
            };
            if let_through {
                agent.accepted(pw);
            }
        }
        return result;
    }
}

struct SudoHook {
    agent: Arc<PasswordAgent>,
    site: String,
    form: SudoForm,
    /// Every prompt marker starts with this; the sudo's pid (0 when wrapped) and `]` follow.
    prefix: Vec<u8>,
    ready: Option<Vec<u8>>,
    /// The command's own input, fed once sudo let us through.
    input: Option<Vec<u8>>,
    /// The input, once let through and not yet taken by `drive`.
    released: Option<Option<Vec<u8>>>,
    /// Bytes held back per stream because they may be the start of a marker.
    held: [Vec<u8>; 2],
    /// The last answer given, and the sudo invocation it went to.
    answered: Option<(u64, Password)>,
    passed: bool,
    rejected: bool,
    pty: bool,
}

/// A prompt marker found in a piece of output.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// At `at`, `len` bytes long, from the sudo invocation `id`.
    Prompt {
        at: usize,
        len: usize,
        id: u64,
    },
    /// A marker may start at `at` but the rest has not arrived yet.
    Partial {
        at: usize,
    },
    None,
}

/// The first prompt marker (`prefix`, digits, `]`) in `data`.
fn find_prompt(data: &[u8], prefix: &[u8]) -> Found {
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&data[from..], prefix) {
        let at = from + i;
        let digits_from = at + prefix.len();
        let digits = data[digits_from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = digits_from + digits;
        match data.get(end) {
            None if digits <= 20 => return Found::Partial { at },
            Some(b']') if (1..=20).contains(&digits) => {
                let id = std::str::from_utf8(&data[digits_from..end])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(u64::MAX);
                return Found::Prompt {
                    at,
                    len: end + 1 - at,
                    id,
                };
            }
            _ => from = at + 1,
        }
    }
    match partial_suffix(data, prefix) {
        0 => Found::None,
        n => Found::Partial { at: data.len() - n },
    }
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

    async fn on_prompt(&mut self, id: u64, process: &mut dyn Process) -> Result<(), ErrorKind> {
        if let Some((asked, pw)) = &self.answered {
            if self.form == SudoForm::Wrapped {
                // Asked again: the answer was wrong. Stop this attempt; `run` starts another.
                tracing::debug!(site = %self.site, agent = %self.agent.name(), generation = pw.generation, "sudo rejected the password");
                self.rejected = true;
                return Err(ErrorKind::SudoRejected);
            }
            if *asked == id {
                // The same sudo asks again: it rejected the answer. The agent drops it and
                // decides whether to ask the user again; sudo counts its own tries.
                tracing::debug!(site = %self.site, agent = %self.agent.name(), generation = pw.generation, "sudo rejected the password");
                self.agent.rejected(pw);
            }
        }
        let pw = self.agent.password(&self.site).await?;
        tracing::trace!(site = %self.site, agent = %self.agent.name(), ?pw, "sudo asks; answering from the agent");
        process.write_stdin(&pw.sudo_answer()).await?;
        self.answered = Some((id, pw));
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
        let partial_at = loop {
            let prompt = find_prompt(&data, &self.prefix);
            let ready_at = self
                .ready
                .as_ref()
                .and_then(|r| memchr::memmem::find(&data, r));
            match prompt {
                Found::Prompt { at, len, id } if ready_at.is_none_or(|r| at < r) => {
                    shown.extend_from_slice(&data[..at]);
                    data.drain(..at + len);
                    self.on_prompt(id, process).await?;
                    continue;
                }
                _ => {}
            }
            let Some(r) = ready_at else {
                break match prompt {
                    Found::Partial { at } => at,
                    _ => data.len(),
                };
            };
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
        };
        let keep = (data.len() - partial_at)
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

    #[test]
    fn prompts_carry_the_invocation_and_may_arrive_in_pieces() {
        let p = b"[polyshell-sudo-ab-";
        assert_eq!(
            find_prompt(b"x[polyshell-sudo-ab-123]y", p),
            Found::Prompt {
                at: 1,
                len: 23,
                id: 123
            }
        );
        assert_eq!(
            find_prompt(b"x[polyshell-sudo-ab-12", p),
            Found::Partial { at: 1 }
        );
        assert_eq!(find_prompt(b"x[polyshell-su", p), Found::Partial { at: 1 });
        assert_eq!(find_prompt(b"x[polyshell-sudo-ab-]", p), Found::None);
        assert_eq!(find_prompt(b"x[polyshell-sudo-ab-1x", p), Found::None);
        assert_eq!(
            find_prompt(b"[polyshell-sudo-ab-z [polyshell-sudo-ab-7]", p),
            Found::Prompt {
                at: 21,
                len: 21,
                id: 7
            }
        );
    }

    #[test]
    fn sudo_is_seen_where_the_shell_runs_a_command() {
        for yes in [
            "sudo a && b",
            "cd /srv && sudo make install",
            "a; sudo b",
            "a |sudo tee f",
            "x=$(sudo cat f)",
            "if sudo true; then :; fi",
            "for i in 1; do sudo x; done",
            "(sudo x)",
            "a\n  sudo b",
            "! sudo x",
        ] {
            assert!(runs_sudo(yes), "{yes}");
        }
        for no in [
            "echo sudo",
            "grep sudo /etc/group",
            "sudoedit f",
            "xsudo a",
            "visudo -c",
            "echo pseudo x",
            "ifsudo x",
        ] {
            assert!(!runs_sudo(no), "{no}");
        }
    }

    #[test]
    fn only_sudo_and_one_simple_command_is_wrapped() {
        assert_eq!(form_of("sudo id -u"), Some(SudoForm::Wrapped));
        assert_eq!(
            form_of("  sudo systemctl restart 'my unit'"),
            Some(SudoForm::Wrapped)
        );
        assert_eq!(form_of("sudo a && b"), Some(SudoForm::Inline));
        assert_eq!(form_of("sudo -u www ls"), Some(SudoForm::Inline));
        assert_eq!(form_of("sudo cat $HOME/x"), Some(SudoForm::Inline));
        assert_eq!(
            form_of("cd /srv && sudo make install"),
            Some(SudoForm::Inline)
        );
        assert_eq!(form_of("echo sudo"), None);
        assert_eq!(form_of("ls"), None);
    }
}
