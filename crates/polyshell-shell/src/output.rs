//! What a command leaves behind (exit status, captured output) and how its output streams
//! out while it runs (line events to an [`OutputSink`]).

use std::fmt;
use std::sync::Arc;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it (the signal's number).
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The status a POSIX shell would report: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Signals as SSH names them (RFC 4254 §6.10), with this system's numbers.
const SIGNALS: &[(i32, &str)] = &[
    (libc::SIGHUP, "HUP"),
    (libc::SIGINT, "INT"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGILL, "ILL"),
    (libc::SIGABRT, "ABRT"),
    (libc::SIGFPE, "FPE"),
    (libc::SIGKILL, "KILL"),
    (libc::SIGUSR1, "USR1"),
    (libc::SIGSEGV, "SEGV"),
    (libc::SIGUSR2, "USR2"),
    (libc::SIGPIPE, "PIPE"),
    (libc::SIGALRM, "ALRM"),
    (libc::SIGTERM, "TERM"),
];

/// The number of a signal named as SSH reports it (`KILL`, `TERM`, ...); unknown names are 0.
pub fn signal_number(name: &str) -> i32 {
    let name = name.trim_start_matches("SIG");
    SIGNALS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(num, _)| *num)
        .unwrap_or(0)
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => match SIGNALS.iter().find(|(n, _)| n == signal) {
                Some((_, name)) => write!(f, "killed by signal {signal} (SIG{name})"),
                None => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of output as it streams: the bytes without the line end. `newline` is false for
/// a last line without `\n` and for the pieces of a line longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// Which stream.
    pub stream: Stream,
    /// The line, without its newline.
    pub bytes: &'a [u8],
    /// Whether it ended with a newline (the last line of a stream may not).
    pub newline: bool,
}

/// Receives output lines while commands run, tagged with the issuer of the shell that ran
/// them. Called from the task that drives the command: keep it quick.
///
/// A closure is a sink; give its parameters their types (`&str`, `Line<'_>`), or Rust infers
/// one lifetime for every call and says "implementation of `FnOnce` is not general enough":
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), polyshell_shell::ShellError> {
/// use polyshell_shell::{Line, Shell, Stream};
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let lines = seen.clone();
/// let shell = Shell::local().with_sink(Arc::new(move |issuer: &str, line: Line<'_>| {
///     if line.stream == Stream::Stdout {
///         let text = String::from_utf8_lossy(line.bytes);
///         lines.lock().unwrap().push(format!("{issuer}: {text}"));
///     }
/// }));
/// shell.run("echo one; echo two").await?;
/// assert_eq!(seen.lock().unwrap().len(), 2);
/// # Ok(())
/// # }
/// ```
pub trait OutputSink: Send + Sync {
    /// Receives one line of a command run by `issuer`.
    fn line(&self, issuer: &str, line: Line<'_>);
}

impl<F: Fn(&str, Line<'_>) + Send + Sync> OutputSink for F {
    fn line(&self, issuer: &str, line: Line<'_>) {
        self(issuer, line)
    }
}

/// A line longer than this streams out in pieces of this size (bounded memory).
pub const MAX_LINE: usize = 64 * 1024;

/// How much of each stream a command keeps by default in its [`Output`]; the rest streams
/// to the sink and is counted as dropped.
pub const DEFAULT_CAPTURE_LIMIT: usize = 16 * 1024 * 1024;

/// A finished command: exit status, and stdout and stderr kept apart, as raw bytes. When a
/// stream was longer than the capture limit, its first bytes are kept and the number of
/// bytes left out is in `stdout_dropped` / `stderr_dropped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How the command ended.
    pub status: ExitStatus,
    /// What it printed on standard output (up to the capture limit).
    pub stdout: Vec<u8>,
    /// What it printed on standard error (up to the capture limit).
    pub stderr: Vec<u8>,
    /// Bytes of standard output past the capture limit, not kept.
    pub stdout_dropped: u64,
    /// Bytes of standard error past the capture limit, not kept.
    pub stderr_dropped: u64,
}

impl Output {
    /// stdout as text (invalid UTF-8 replaced), ending with a marker if it was truncated.
    pub fn stdout_text(&self) -> String {
        text(&self.stdout, self.stdout_dropped)
    }

    /// stderr as text (invalid UTF-8 replaced), ending with a marker if it was truncated.
    pub fn stderr_text(&self) -> String {
        text(&self.stderr, self.stderr_dropped)
    }
}

fn text(bytes: &[u8], dropped: u64) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if dropped > 0 {
        s.push_str(&format!(
            "\n[polyshell: output truncated, {dropped} more bytes not captured]\n"
        ));
    }
    s
}

/// Splits a stream's chunks into lines for the sink and keeps the captured prefix.
pub(crate) struct StreamCollector {
    stream: Stream,
    partial: Vec<u8>,
    captured: Vec<u8>,
    dropped: u64,
    limit: usize,
}

impl StreamCollector {
    pub(crate) fn new(stream: Stream, limit: usize) -> StreamCollector {
        StreamCollector {
            stream,
            partial: Vec::new(),
            captured: Vec::new(),
            dropped: 0,
            limit,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8], sink: Option<(&Arc<dyn OutputSink>, &str)>) {
        let room = self.limit.saturating_sub(self.captured.len());
        let keep = room.min(chunk.len());
        self.captured.extend_from_slice(&chunk[..keep]);
        self.dropped += (chunk.len() - keep) as u64;
        let Some((sink, issuer)) = sink else { return };
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let line = &rest[..i];
            if self.partial.is_empty() {
                self.emit(sink, issuer, line, true);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.emit(sink, issuer, &whole, true);
                whole.clear();
                self.partial = whole; // keep the allocation
            }
            rest = &rest[i + 1..];
        }
        // No newline left: a line longer than MAX_LINE goes out in pieces, straight from
        // the chunk where it can.
        if self.partial.len() + rest.len() >= MAX_LINE {
            let need = MAX_LINE - self.partial.len();
            let mut piece = std::mem::take(&mut self.partial);
            piece.extend_from_slice(&rest[..need]);
            self.emit(sink, issuer, &piece, false);
            piece.clear();
            self.partial = piece;
            rest = &rest[need..];
            while rest.len() >= MAX_LINE {
                self.emit(sink, issuer, &rest[..MAX_LINE], false);
                rest = &rest[MAX_LINE..];
            }
        }
        self.partial.extend_from_slice(rest);
    }

    fn emit(&self, sink: &Arc<dyn OutputSink>, issuer: &str, bytes: &[u8], newline: bool) {
        sink.line(
            issuer,
            Line {
                stream: self.stream,
                bytes,
                newline,
            },
        );
    }

    /// Emits a last line without newline, and returns the captured bytes and the count left out.
    pub(crate) fn finish(mut self, sink: Option<(&Arc<dyn OutputSink>, &str)>) -> (Vec<u8>, u64) {
        if let Some((sink, issuer)) = sink {
            if !self.partial.is_empty() {
                let last = std::mem::take(&mut self.partial);
                self.emit(sink, issuer, &last, false);
            }
        }
        (self.captured, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn lines_split_across_chunks_and_caps() {
        type Seen = Vec<(Vec<u8>, bool)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let record = seen.clone();
        let sink: Arc<dyn OutputSink> = Arc::new(move |_: &str, l: Line<'_>| {
            record.lock().unwrap().push((l.bytes.to_vec(), l.newline))
        });
        let mut c = StreamCollector::new(Stream::Stdout, 8);
        for chunk in [&b"ab"[..], b"c\nde", b"f\n\n", b"tail"] {
            c.push(chunk, Some((&sink, "x")));
        }
        let (captured, dropped) = c.finish(Some((&sink, "x")));
        assert_eq!(captured, b"abc\ndef\n");
        assert_eq!(dropped, 5);
        let seen = seen.lock().unwrap();
        let expected: Vec<(Vec<u8>, bool)> = vec![
            (b"abc".to_vec(), true),
            (b"def".to_vec(), true),
            (b"".to_vec(), true),
            (b"tail".to_vec(), false),
        ];
        assert_eq!(*seen, expected);
    }

    #[test]
    fn very_long_lines_stream_in_pieces() {
        let count: Arc<Mutex<usize>> = Arc::default();
        let c2 = count.clone();
        let sink: Arc<dyn OutputSink> = Arc::new(move |_: &str, l: Line<'_>| {
            assert!(l.bytes.len() <= MAX_LINE);
            *c2.lock().unwrap() += 1;
        });
        let mut c = StreamCollector::new(Stream::Stderr, 0);
        c.push(&vec![b'x'; MAX_LINE * 3 + 5], Some((&sink, "x")));
        c.finish(Some((&sink, "x")));
        assert_eq!(*count.lock().unwrap(), 4);
    }
}
