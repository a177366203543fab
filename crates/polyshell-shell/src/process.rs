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
    Output(Stream, Vec<u8>),
    Exit(ExitStatus),
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
}

/// Drives `process` to its end.
pub async fn drive(
    mut process: Box<dyn Process>,
    command: &Command,
    sink: Option<(&Arc<dyn OutputSink>, &str)>,
    mut hook: Option<&mut dyn OutputHook>,
    keep_stdin_open: bool,
) -> Result<Output, ErrorKind> {
    if let Some(input) = &command.stdin {
        process.write_stdin(input).await?;
    }
    if !keep_stdin_open {
        process.close_stdin().await;
    }
    let mut out = StreamCollector::new(Stream::Stdout, command.capture_limit);
    let mut err = StreamCollector::new(Stream::Stderr, command.capture_limit);
    let body = async {
        loop {
            match process.next().await {
                ProcEvent::Output(stream, chunk) => {
                    let shown = match hook.as_deref_mut() {
                        Some(h) => h.filter(stream, chunk, process.as_mut()).await?,
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
