//! A running command, whatever the transport, and the loop that drives it to an [`Output`]:
//! streaming lines to the sink, capturing, feeding stdin, enforcing the timeout.

use crate::error::ErrorKind;
use crate::output::{ExitStatus, Output, OutputSink, Stream, StreamCollector};
use crate::Command;
use async_trait::async_trait;
use std::sync::Arc;

/// What a running command reports.
#[derive(Debug)]
pub enum ProcEvent {
    /// Output on a stream.
    Output(Stream, Vec<u8>),
    /// The process exited.
    Exit(ExitStatus),
    /// The process could not run to its end.
    Failed(ErrorKind),
}

/// A command running on some transport. Dropping it before it ended terminates the command
/// (its whole process group), without waiting.
#[async_trait]
pub trait Process: Send {
    /// The next event; `Exit` or `Failed` is the last.
    async fn next(&mut self) -> ProcEvent;
    /// Writes to the command's standard input.
    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ErrorKind>;
    /// Closes the command's standard input.
    async fn close_stdin(&mut self);
    /// Terminates the command's process group (TERM, then KILL) and waits until done.
    async fn terminate(&mut self);
    /// Hands out the command's standard input as a writer of its own, so that input can be
    /// written while output is read (a command that echoes its input would otherwise fill
    /// its output pipe and stop reading). `None` (the default): [`drive`] writes the input
    /// through [`write_stdin`](Process::write_stdin) before reading any output.
    fn split_stdin(&mut self) -> Option<Box<dyn StdinWriter>> {
        None
    }
}

/// A running command's standard input, written independently of its output.
#[async_trait]
pub trait StdinWriter: Send {
    /// Writes some of `data` and says how much. Cancel-safe: if the future is dropped before
    /// it completes, nothing was written. An error means the command takes no more input.
    async fn write(&mut self, data: &[u8]) -> Result<usize, ErrorKind>;
    /// Closes the input (end of file for the command).
    async fn close(&mut self);
}

/// The piece of `data` a stdin writer sends next (at most 256 KiB: fewer wake-ups of the
/// other side for a stream of input), once `credit` has room for it; a closed credit means
/// the command takes no more input. The only await: cancelled there, nothing was taken.
#[cfg(feature = "ssh")]
pub(crate) async fn take_credit(
    credit: &tokio::sync::Semaphore,
    data: &[u8],
) -> Result<usize, ErrorKind> {
    let n = data.len().min(256 * 1024);
    if n == 0 {
        return Ok(0);
    }
    credit
        .acquire_many(n as u32)
        .await
        .map_err(|_| ErrorKind::StdinClosed)?
        .forget();
    Ok(n)
}

/// Hooks into a running command's output, e.g. to answer sudo's prompt.
#[async_trait]
pub trait OutputHook: Send {
    /// Sees every chunk first and returns what remains to show and capture.
    async fn filter(
        &mut self,
        stream: Stream,
        chunk: Vec<u8>,
        process: &mut dyn Process,
    ) -> Result<Vec<u8>, ErrorKind>;
    /// The command ended: what was held back of each stream, or an error to report instead.
    fn finish(&mut self) -> Result<(Vec<u8>, Vec<u8>), ErrorKind>;
    /// Once the hook lets the command's own input through (e.g. sudo accepted the password):
    /// `Some(input)` once, and [`drive`] then writes the input and closes stdin.
    fn release_input(&mut self) -> Option<Option<Vec<u8>>> {
        None
    }
}

/// Input still to be written to a command, and whether stdin is closed after it.
struct Feed {
    data: Vec<u8>,
    at: usize,
}

/// Writes a piece of `feed`; `true` once all of it is written or the command takes no more.
async fn feed_some(writer: &mut dyn StdinWriter, feed: &mut Feed) -> bool {
    const PIECE: usize = 64 * 1024;
    if feed.at >= feed.data.len() {
        return true;
    }
    let end = (feed.at + PIECE).min(feed.data.len());
    match writer.write(&feed.data[feed.at..end]).await {
        Ok(0) | Err(_) => true, // the command stopped reading its input: not an error
        Ok(n) => {
            feed.at += n;
            feed.at >= feed.data.len()
        }
    }
}

/// Drives `process` to its end: output to the sink and the capture, input written at the
/// same time, the whole of it (input included) under the command's timeout.
pub async fn drive(
    mut process: Box<dyn Process>,
    command: &Command,
    sink: Option<(&Arc<dyn OutputSink>, &str)>,
    mut hook: Option<&mut dyn OutputHook>,
    keep_stdin_open: bool,
) -> Result<Output, ErrorKind> {
    let mut writer = process.split_stdin();
    // Input to write now (a hook may release more later), and whether to close stdin after.
    let mut feed: Option<Feed> = None;
    if !keep_stdin_open {
        let data = command.stdin.clone().unwrap_or_default();
        match writer.as_mut() {
            Some(_) => feed = Some(Feed { data, at: 0 }),
            None => {
                process.write_stdin(&data).await?;
                process.close_stdin().await;
            }
        }
    }
    let mut out = StreamCollector::new(Stream::Stdout, command.capture_limit);
    let mut err = StreamCollector::new(Stream::Stderr, command.capture_limit);
    let body = async {
        loop {
            let writing = async {
                match (writer.as_deref_mut(), feed.as_mut()) {
                    (Some(w), Some(f)) => {
                        if feed_some(w, f).await {
                            w.close().await;
                            true
                        } else {
                            false
                        }
                    }
                    _ => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                event = process.next() => event,
                finished = writing => {
                    if finished {
                        feed = None;
                        writer = None;
                    }
                    continue;
                }
            };
            match event {
                ProcEvent::Output(stream, chunk) => {
                    let shown = match hook.as_deref_mut() {
                        Some(h) => {
                            let shown = h.filter(stream, chunk, process.as_mut()).await?;
                            if let Some(input) = h.release_input() {
                                let data = input.unwrap_or_default();
                                match writer.as_mut() {
                                    Some(_) => feed = Some(Feed { data, at: 0 }),
                                    None => {
                                        process.write_stdin(&data).await?;
                                        process.close_stdin().await;
                                    }
                                }
                            }
                            shown
                        }
                        None => chunk,
                    };
                    match stream {
                        Stream::Stdout => out.push(&shown, sink),
                        Stream::Stderr => err.push(&shown, sink),
                    }
                }
                ProcEvent::Exit(status) => return Ok(status),
                ProcEvent::Failed(kind) => return Err(kind),
            }
        }
    };
    let status = match command.timeout {
        None => body.await,
        Some(limit) => match tokio::time::timeout(limit, body).await {
            Ok(result) => result,
            Err(_) => {
                process.terminate().await;
                return Err(ErrorKind::Timeout(limit));
            }
        },
    };
    let status = match status {
        Ok(status) => status,
        Err(kind) => {
            process.terminate().await;
            return Err(kind);
        }
    };
    if let Some(h) = hook {
        let (rest_out, rest_err) = h.finish()?;
        out.push(&rest_out, sink);
        err.push(&rest_err, sink);
    }
    let (stdout, stdout_dropped) = out.finish(sink);
    let (stderr, stderr_dropped) = err.finish(sink);
    Ok(Output {
        status,
        stdout,
        stderr,
        stdout_dropped,
        stderr_dropped,
    })
}
