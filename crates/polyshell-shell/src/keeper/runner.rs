//! The runner: one `/bin/sh` per kept connection that runs the connection's plain commands
//! one after another, each in a subshell of its own. A command on a session channel costs the
//! site a forked sshd, the login shell and `sh` starting (~4 ms of CPU per command here, two
//! thirds of a second run's CPU at 500 sites); through the runner it costs one `fork`.
//!
//! Plain: the command takes no input (its stdin is closed at once), has no terminal, and its
//! script starts nothing in the background ([`takes`]): a process left behind would hold the
//! runner's output and process group, where on a channel of its own it holds only its own.
//! Everything else runs on a channel of its own, as without the keeper.
//!
//! What a command sees is what it sees on a channel of its own: `sh` as `$0`, no positional
//! parameters, the login directory, the session's environment, stdin at end of file, and `$$`
//! the pid of the process group that a cancellation ends (the runner's). It runs in a
//! subshell, so `exit`, `cd`, `export` and traps end with it. What differs: a command killed
//! by a signal reports `128 + N` as its exit code (sh's `$?`), unless it killed the runner
//! (`kill $$`), which reports the signal; and a cancellation ends the runner (the next plain
//! command starts another).
//!
//! The protocol on the runner's channel: the keeper writes a command's script and then a
//! line holding the runner's token alone. The runner says `TOKEN:a` on stderr (it has the
//! script: the command runs), runs it, says `TOKEN:e<status>` on stderr and `TOKEN:o` on
//! stdout. The token is random per runner, so a command's output cannot fake it.

use crate::error::ErrorKind;
use crate::output::{ExitStatus, Stream};
use crate::process::{ProcEvent, Process, StdinWriter};
use crate::ssh::{SshProcess, SshTransport};
use std::collections::VecDeque;

/// Whether a script may run on the runner: nothing in it can start a process that outlives
/// it (a lone `&`, `nohup`, `setsid`, `disown`). Lexical and cautious: `echo 'a & b'` runs on
/// a channel of its own, which is always correct.
pub(crate) fn takes(script: &str) -> bool {
    let bytes = script.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'&' {
            let before = i.checked_sub(1).map(|j| bytes[j]);
            let after = bytes.get(i + 1).copied();
            let paired = after == Some(b'&') || before == Some(b'&');
            // `>&2`, `<&3`; sh reads `a &>f` as `a &` and `>f`.
            let redirect = matches!(before, Some(b'>' | b'<'));
            if !paired && !redirect {
                return false;
            }
        }
        if b == 0 {
            return false;
        }
    }
    !["nohup", "setsid", "disown"]
        .iter()
        .any(|word| script.contains(word))
}

/// The runner's loop, in POSIX sh. Its variables are gone before a command's script runs.
fn loop_script(token: &str) -> String {
    format!(
        "_ps_tok='{token}'\n\
         while :; do\n\
         _ps_script=\n\
         while IFS= read -r _ps_line || exit 0; do\n\
         [ \"$_ps_line\" = \"$_ps_tok\" ] && break\n\
         _ps_script=\"$_ps_script$_ps_line\n\"\n\
         done\n\
         printf '%s:a\\n' \"$_ps_tok\" >&2\n\
         (unset _ps_tok _ps_line; eval \"unset _ps_script; $_ps_script\") </dev/null\n\
         printf '%s:e%d\\n' \"$_ps_tok\" \"$?\" >&2\n\
         printf '%s:o\\n' \"$_ps_tok\"\n\
         done\n"
    )
}

/// What a command on the runner did next.
pub(crate) enum Step {
    /// The runner has the script: the command runs.
    Started,
    Output(Stream, Vec<u8>),
    Finished(ExitStatus),
    /// The runner ended (killed with its command, or its connection lost).
    Ended(Result<ExitStatus, ErrorKind>),
}

pub(crate) struct Runner {
    process: SshProcess,
    stdin: Box<dyn StdinWriter>,
    token: String,
    scanners: [Scanner; 2],
    ready: VecDeque<Step>,
    stdout_done: bool,
    status: Option<i32>,
}

impl Runner {
    /// Starts a runner on the transport's connection; `marker` is the pid line's marker.
    pub(crate) async fn start(transport: &SshTransport, marker: &str) -> Result<Runner, ErrorKind> {
        let token = format!("[polyshell-run-{:032x}]", rand::random::<u128>());
        let script = crate::Command::new(loop_script(&token)).remote_script(Some(marker));
        let mut process = transport
            .open_resident(crate::command::login_shell_line(&script))
            .await?;
        let Some(stdin) = process.split_stdin() else {
            return Err(ErrorKind::Keeper("a runner without input".into()));
        };
        let tag = format!("{token}:").into_bytes();
        Ok(Runner {
            process,
            stdin,
            token,
            scanners: [Scanner::new(tag.clone()), Scanner::new(tag)],
            ready: VecDeque::new(),
            stdout_done: false,
            status: None,
        })
    }

    /// Hands the runner a command's script.
    pub(crate) async fn send(&mut self, script: &str) -> Result<(), ErrorKind> {
        self.stdout_done = false;
        self.status = None;
        let mut text = script.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&self.token);
        text.push('\n');
        let mut at = 0;
        while at < text.len() {
            match self.stdin.write(&text.as_bytes()[at..]).await? {
                0 => return Err(ErrorKind::Keeper("the runner takes no more input".into())),
                n => at += n,
            }
        }
        Ok(())
    }

    pub(crate) async fn next(&mut self) -> Step {
        loop {
            if let Some(step) = self.ready.pop_front() {
                return step;
            }
            let (stream, data) = match self.process.next().await {
                ProcEvent::Output(stream, data) => (stream, data),
                ProcEvent::Exit(status) => return Step::Ended(Ok(status)),
                ProcEvent::Failed(kind) => return Step::Ended(Err(kind)),
            };
            let scanner = &mut self.scanners[matches!(stream, Stream::Stderr) as usize];
            for piece in scanner.feed(&data) {
                match piece {
                    Piece::Data(data) => self.ready.push_back(Step::Output(stream, data)),
                    Piece::Tag(tag) => match (stream, tag.split_first()) {
                        (Stream::Stdout, Some((b'o', _))) => self.stdout_done = true,
                        (Stream::Stderr, Some((b'a', _))) => self.ready.push_back(Step::Started),
                        (Stream::Stderr, Some((b'e', code))) => {
                            self.status =
                                std::str::from_utf8(code).ok().and_then(|c| c.parse().ok());
                        }
                        _ => {}
                    },
                }
            }
            if self.stdout_done {
                if let Some(code) = self.status.take() {
                    self.stdout_done = false;
                    self.ready.push_back(Step::Finished(ExitStatus::Code(code)));
                }
            }
        }
    }

    /// Ends an idle runner: end of its input, and up to 2 s for it to exit (its session is
    /// then free: a server allowing one session has room for a command of its own).
    pub(crate) async fn close(mut self) {
        self.stdin.close().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let ProcEvent::Output(..) = self.process.next().await {}
        })
        .await;
    }

    /// Ends the runner's process group: the command running on it and the runner.
    pub(crate) async fn terminate(&mut self) {
        self.process.terminate().await;
    }
}

enum Piece {
    Data(Vec<u8>),
    /// What followed the tag up to the end of its line.
    Tag(Vec<u8>),
}

/// Finds the runner's tags in a stream, passing everything else on; holds back only what may
/// be the start of a tag.
struct Scanner {
    tag: Vec<u8>,
    held: Vec<u8>,
}

impl Scanner {
    fn new(tag: Vec<u8>) -> Scanner {
        Scanner {
            tag,
            held: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        self.held.extend_from_slice(data);
        loop {
            let Some(at) = memchr::memmem::find(&self.held, &self.tag) else {
                let keep = (1..self.tag.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&k| self.held.ends_with(&self.tag[..k]))
                    .unwrap_or(0);
                let emit = self.held.len() - keep;
                if emit > 0 {
                    out.push(Piece::Data(self.held.drain(..emit).collect()));
                }
                return out;
            };
            if at > 0 {
                out.push(Piece::Data(self.held.drain(..at).collect()));
            }
            let after = self.tag.len();
            let Some(nl) = self.held[after..].iter().position(|&b| b == b'\n') else {
                return out; // the tag's line is not complete yet
            };
            let tag = self.held[after..after + nl].to_vec();
            self.held.drain(..after + nl + 1);
            out.push(Piece::Tag(tag));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scanner: &mut Scanner, pieces: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
        let (mut data, mut tags) = (Vec::new(), Vec::new());
        for piece in pieces {
            for p in scanner.feed(piece) {
                match p {
                    Piece::Data(d) => data.extend(d),
                    Piece::Tag(t) => tags.push(String::from_utf8(t).unwrap()),
                }
            }
        }
        (data, tags)
    }

    #[test]
    fn tags_are_found_across_pieces_and_the_rest_passes() {
        let mut s = Scanner::new(b"[T]:".to_vec());
        let (data, tags) = run(&mut s, &[b"out\nno newl", b"ine[", b"T", b"]:o", b"\n"]);
        assert_eq!(data, b"out\nno newline");
        assert_eq!(tags, ["o"]);
        let (data, tags) = run(&mut s, &[b"[T]:a\nerr [T] [T]:e143\n"]);
        assert_eq!(data, b"err [T] ");
        assert_eq!(tags, ["a", "e143"]);
        let (data, tags) = run(&mut s, &[b"x[", b"y"]);
        assert_eq!(data, b"x[y");
        assert!(tags.is_empty());
    }

    #[test]
    fn scripts_that_may_leave_a_process_behind_are_not_taken() {
        for ok in [
            "true",
            "a && b",
            "a || b",
            "echo x >&2",
            "cat <&3",
            "uptime",
        ] {
            assert!(takes(ok), "{ok}");
        }
        for not in [
            "sleep 9 &",
            "(a &)",
            "a & b",
            "ls &>/dev/null",
            "nohup x",
            "setsid x",
            "x; disown",
        ] {
            assert!(!takes(not), "{not}");
        }
    }
}
