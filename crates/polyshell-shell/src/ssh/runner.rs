//! The runner: one `/bin/sh` per connection that runs the connection's plain commands one
//! after another, each in a subshell of its own. A command on a session channel costs the
//! site a forked sshd, the login shell (with whatever rc file it reads) and `sh` starting
//! (~4 ms of CPU per command here, two thirds of a second `--persist` run's CPU at 500
//! sites); through the runner it costs one `fork`. The connection keeper (`--persist`)
//! always has one; a direct connection has one when [`SshOptions::resident_shell`] says so
//! (the CLI: a site with more than one action in the run).
//!
//! Plain: the command takes no input (its stdin is closed at once), has no terminal, and its
//! script starts nothing in the background ([`takes`]): a process left behind would hold the
//! runner's output and process group, where on a channel of its own it holds only its own.
//! Everything else runs on a channel of its own.
//!
//! What a command sees is what it sees on a channel of its own: `sh` as `$0`, no positional
//! parameters, the login directory, the session's environment, stdin at end of file, and `$$`
//! the pid of the process group that a cancellation ends (the runner's). It runs in a
//! subshell, so `exit`, `cd`, `export` and traps end with it. What differs: a command killed
//! by a signal reports `128 + N` as its exit code (sh's `$?`), unless it killed the runner
//! (`kill $$`), which reports the signal; and a cancellation ends the runner (the next plain
//! command starts another).
//!
//! The protocol on the runner's channel: the first command's script comes in the runner's
//! own (no round trip for it); each later one, the client writes on its input followed by a
//! line holding the runner's token alone. For each, the runner says `TOKEN:a` on stderr (it has the
//! script: the command runs), runs it, says `TOKEN:e<status>` on stderr and `TOKEN:o` on
//! stdout. The token is random per runner, so a command's output cannot fake it.
//!
//! [`SshOptions::resident_shell`]: crate::SshOptions::resident_shell

use crate::error::ErrorKind;
use crate::output::{ExitStatus, Stream};
use crate::process::{ProcEvent, Process, StdinWriter};
use crate::ssh::{SshProcess, SshTransport};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::OwnedMutexGuard;

/// A connection's runner, once one ran; locked while it runs a command.
pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<Runner>>>;

/// The script a command runs on the runner, if it is plain (see the module's doc).
pub(crate) fn plain_script(command: &crate::Command) -> Option<String> {
    (command.input_closed && !command.pty && !command.bulk)
        .then(|| command.remote_script(None))
        .filter(|script| takes(script))
}

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

/// The runner's loop, in POSIX sh, starting with `first` (a command's script: it comes with
/// the runner's own, not a round trip later on its input). Its variables are gone before a
/// command's script runs.
fn loop_script(token: &str, first: &str) -> String {
    let first = format!("'{}'", first.replace('\'', "'\\''"));
    format!(
        "_ps_tok='{token}'\n\
         _ps_script={first}\n\
         _ps_have=1\n\
         while :; do\n\
         if [ \"$_ps_have\" = 1 ]; then _ps_have=0; else\n\
         _ps_script=\n\
         while IFS= read -r _ps_line || exit 0; do\n\
         [ \"$_ps_line\" = \"$_ps_tok\" ] && break\n\
         _ps_script=\"$_ps_script$_ps_line\n\"\n\
         done\n\
         fi\n\
         printf '%s:a\\n' \"$_ps_tok\" >&2\n\
         (unset _ps_tok _ps_line _ps_have; eval \"unset _ps_script; $_ps_script\") </dev/null\n\
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
    /// It has a command (from its script's hand-over to the command's end).
    busy: bool,
}

impl Runner {
    /// Starts a runner on the transport's connection; `marker` is the pid line's marker.
    /// With `spare`, the connection keeps a spare channel beside it (for the commands that
    /// are not plain); without, the runner alone keeps nothing open. It runs `first` at once
    /// (see [`loop_script`]): the caller does not [`send`](Runner::send) it.
    async fn start(
        transport: &SshTransport,
        marker: &str,
        spare: bool,
        first: &str,
    ) -> Result<Runner, ErrorKind> {
        let token = format!("[polyshell-run-{:032x}]", rand::random::<u128>());
        let script = crate::Command::new(loop_script(&token, first)).remote_script(Some(marker));
        let mut process = transport
            .open_runner(crate::command::login_shell_line(&script), spare)
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
            busy: true,
        })
    }

    /// The connection the runner is on.
    pub(crate) fn connection(&self) -> &crate::ssh::connection::Connection {
        self.process.connection()
    }

    /// Hands the runner a command's script.
    pub(crate) async fn send(&mut self, script: &str) -> Result<(), ErrorKind> {
        self.busy = true;
        self.process.conn.opens.runner_busy(self.process.id);
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
                    self.busy = false;
                    self.process.conn.opens.runner_idle(self.process.id);
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

/// A plain command running on a connection's runner, which it holds until it ends.
pub(crate) struct OnRunner {
    slot: OwnedMutexGuard<Option<Runner>>,
    /// Output that came before the runner said the command started (stdout and stderr are
    /// apart on the wire: the command's first output may pass the runner's word on stderr).
    early: VecDeque<ProcEvent>,
    finished: bool,
}

impl OnRunner {
    /// Hands `script` to the connection's runner (started if there is none) and waits until
    /// the command runs. `None`: it is for a channel of its own, as it never ran: the runner
    /// is busy, could not start, or was found gone (a dead connection: the channel
    /// reconnects). With `spare`, see [`Runner::start`].
    pub(crate) async fn start(
        slot: &Slot,
        transport: &SshTransport,
        script: &str,
        spare: bool,
    ) -> Option<OnRunner> {
        let mut slot = slot.clone().try_lock_owned().ok()?;
        // A runner that was busy when its connection was let go (`disconnect`) came back to
        // the slot with it: let go of it too, so that this command runs on the current one.
        if let Some(runner) = slot.as_ref() {
            if !transport.holds(runner.connection()).await {
                slot.take();
            }
        }
        let fresh = slot.is_none();
        if fresh {
            match Runner::start(transport, &crate::ssh::pid_marker(), spare, script).await {
                Ok(runner) => *slot = Some(runner),
                Err(e) => {
                    tracing::debug!(site = %transport.host(), error = %e, "no runner");
                    return None;
                }
            }
        }
        // From here, dropped (the command cancelled while it starts), it kills the runner:
        // the runner may have the script, and its next words would be this command's.
        let mut on = OnRunner {
            slot,
            early: VecDeque::new(),
            finished: false,
        };
        if !fresh && on.slot.as_mut()?.send(script).await.is_err() {
            return None;
        }
        loop {
            match on.slot.as_mut()?.next().await {
                Step::Started => return Some(on),
                Step::Output(stream, data) => on.early.push_back(ProcEvent::Output(stream, data)),
                // Its status follows its start on stderr: it cannot come first.
                Step::Finished(_) => {}
                // Gone before its start was said: the command never ran (and wrote nothing).
                Step::Ended(_) => {
                    tracing::debug!(site = %transport.host(), "the runner was gone; a channel of its own");
                    return None;
                }
            }
        }
    }
}

#[async_trait]
impl Process for OnRunner {
    async fn next(&mut self) -> ProcEvent {
        if let Some(event) = self.early.pop_front() {
            return event;
        }
        let Some(runner) = self.slot.as_mut() else {
            self.finished = true;
            return ProcEvent::Failed(ErrorKind::Keeper("the runner is gone".into()));
        };
        loop {
            match runner.next().await {
                Step::Started => {}
                Step::Output(stream, data) => return ProcEvent::Output(stream, data),
                Step::Finished(status) => {
                    self.finished = true;
                    return ProcEvent::Exit(status);
                }
                Step::Ended(result) => {
                    self.finished = true;
                    *self.slot = None;
                    return match result {
                        Ok(status) => ProcEvent::Exit(status),
                        Err(kind) => ProcEvent::Failed(kind),
                    };
                }
            }
        }
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ErrorKind> {
        match data.is_empty() {
            true => Ok(()),
            false => Err(ErrorKind::StdinClosed), // a plain command takes none
        }
    }

    async fn close_stdin(&mut self) {}

    /// Ends the runner's process group: the command and the runner (the next plain command
    /// starts another).
    async fn terminate(&mut self) {
        if let Some(mut runner) = self.slot.take() {
            runner.terminate().await;
        }
        self.finished = true;
    }
}

impl Drop for OnRunner {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped while it runs: the runner's process goes, and the command with it.
            self.slot.take();
        }
    }
}

impl Drop for Runner {
    /// Dropped idle (its connection's last user gone), a runner is let go with the end of its
    /// input: it exits by itself, or with its session when the connection closes. Dropped
    /// with a command, its process is killed (the [`SshProcess`]'s drop).
    fn drop(&mut self) {
        self.process.conn.opens.runner_busy(self.process.id);
        if !self.busy {
            self.process.let_go();
        }
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
    fn the_loop_runs_its_first_script_verbatim_then_the_ones_on_its_input() {
        let first = "printf '%s|' \"it's\" 'a\\b' \"$0\"; exit 4";
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(loop_script("[T]", first))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo second\n[T]\n").unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's|a\\b|sh|[T]:o\nsecond\n[T]:o\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "[T]:a\n[T]:e4\n[T]:a\n[T]:e0\n"
        );
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
