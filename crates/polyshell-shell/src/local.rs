//! The local transport: commands run as child processes of this one, each in its own process
//! group so that cancelling one terminates everything it started.

use crate::error::ErrorKind;
use crate::output::{ExitStatus, Stream};
use crate::process::{ProcEvent, Process, StdinWriter};
use async_trait::async_trait;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

/// How long a terminated process group gets between SIGTERM and SIGKILL.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// Starts `program args...` in a process group of its own.
pub(crate) fn spawn(program: &str, args: &[String]) -> Result<LocalProcess, ErrorKind> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| ErrorKind::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let (tx, rx) = mpsc::channel(16);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, Stream::Stderr, tx));
    }
    Ok(LocalProcess {
        pgid: child.id().map(|id| id as i32),
        stdin: Arc::new(tokio::sync::Mutex::new(child.stdin.take())),
        child,
        output: rx,
        exited: false,
    })
}

async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    stream: Stream,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub(crate) struct LocalProcess {
    child: Child,
    pgid: Option<i32>,
    /// Shared with the writer [`split_stdin`](Process::split_stdin) hands out: sudo's
    /// password goes through `write_stdin` while the command's input has its own writer.
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    output: mpsc::Receiver<(Stream, Vec<u8>)>,
    exited: bool,
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

#[async_trait]
impl Process for LocalProcess {
    async fn next(&mut self) -> ProcEvent {
        if let Some((stream, chunk)) = self.output.recv().await {
            return ProcEvent::Output(stream, chunk);
        }
        // Both pipes closed: the command is done (or handed its pipes to nobody).
        match self.child.wait().await {
            Ok(status) => {
                self.exited = true;
                ProcEvent::Exit(match (status.code(), status.signal()) {
                    (Some(code), _) => ExitStatus::Code(code),
                    (None, Some(signal)) => ExitStatus::Signal(signal),
                    (None, None) => ExitStatus::Code(-1),
                })
            }
            Err(err) => ProcEvent::Failed(ErrorKind::Io(err)),
        }
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ErrorKind> {
        if let Some(stdin) = self.stdin.lock().await.as_mut() {
            // A command that exits without reading its input is not an error.
            let _ = stdin.write_all(data).await;
            let _ = stdin.flush().await;
        }
        Ok(())
    }

    async fn close_stdin(&mut self) {
        self.stdin.lock().await.take();
    }

    fn split_stdin(&mut self) -> Option<Box<dyn StdinWriter>> {
        Some(Box::new(LocalStdin(self.stdin.clone())))
    }

    async fn terminate(&mut self) {
        let Some(pgid) = self.pgid else { return };
        signal_group(pgid, libc::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, self.child.wait())
            .await
            .is_err()
        {
            signal_group(pgid, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        // The leader is gone; make sure nothing it started lingers in the group.
        signal_group(pgid, libc::SIGKILL);
        self.exited = true;
    }
}

/// A child's stdin pipe, written while its output is read.
pub(crate) struct LocalStdin(Arc<tokio::sync::Mutex<Option<ChildStdin>>>);

#[async_trait]
impl StdinWriter for LocalStdin {
    async fn write(&mut self, data: &[u8]) -> Result<usize, ErrorKind> {
        match self.0.lock().await.as_mut() {
            // `write` is cancel-safe (nothing written if dropped); `write_all` is not.
            Some(pipe) => Ok(pipe.write(data).await?),
            None => Ok(0),
        }
    }

    async fn close(&mut self) {
        if let Some(mut pipe) = self.0.lock().await.take() {
            let _ = pipe.flush().await;
        }
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        if let Some(pgid) = self.pgid {
            signal_group(pgid, libc::SIGTERM);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    tokio::time::sleep(KILL_GRACE).await;
                    signal_group(pgid, libc::SIGKILL);
                });
            }
        }
    }
}
