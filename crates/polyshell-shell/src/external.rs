//! The system OpenSSH client as a transport (site option `ssh`), for what libssh2 cannot do:
//! ProxyCommand, GSSAPI, ControlMaster, hardware keys. Each command is one `ssh` process.

use crate::command::{login_shell_line, take_pid_line, terminate_script};
use crate::error::ErrorKind;
use crate::local::{self, LocalProcess};
use crate::output::Stream;
use crate::process::{ProcEvent, Process, StdinWriter};
use crate::{Command, Transport};
use async_trait::async_trait;
use std::path::Path;
use std::time::Duration;

/// Runs commands as `PROGRAM ARGS... -T -o BatchMode=yes HOST -- SCRIPT`.
pub(crate) struct ExternalSsh {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) host: String,
    pub(crate) marker: String,
}

impl ExternalSsh {
    pub(crate) fn new(program: &str, args: Vec<String>, host: &str) -> ExternalSsh {
        ExternalSsh {
            program: program.to_owned(),
            args,
            host: host.to_owned(),
            marker: format!("[polyshell-pid-{:016x}]", rand::random::<u64>()),
        }
    }

    fn argv(&self, script: &str) -> Vec<String> {
        let mut argv = self.args.clone();
        argv.extend(["-T", "-o", "BatchMode=yes", &self.host, "--", script].map(String::from));
        argv
    }
}

#[async_trait]
impl Transport for ExternalSsh {
    async fn spawn(&self, command: &Command) -> Result<Box<dyn Process>, ErrorKind> {
        // Environment and directory travel inside the script, not to the local ssh; the
        // script runs under a POSIX sh whatever the remote login shell is.
        let script = login_shell_line(&command.remote_script(Some(&self.marker)));
        let process = local::spawn(&self.program, &self.argv(&script))?;
        Ok(Box::new(ExternalProcess(Some(Remote {
            process,
            remote_pgid: None,
            transport: (self.program.clone(), self.argv("")),
            marker: self.marker.clone(),
            head: Some(Vec::new()),
            pending: None,
            finished: false,
        }))))
    }

    async fn connect(&self) -> Result<(), ErrorKind> {
        Ok(())
    }

    async fn upload(&self, local: &Path, remote: &str) -> Result<(), ErrorKind> {
        crate::stream_transfer::upload(self, local, remote).await
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<(), ErrorKind> {
        crate::stream_transfer::download(self, remote, local).await
    }

    fn describe(&self) -> String {
        format!("{} {}", self.program, self.host)
    }
}

/// A command run by one local `ssh` process. Dropped before it ended, it is terminated
/// on the site too (a task does it; [`crate::flush_terminations`] waits for it).
struct ExternalProcess(Option<Remote>);

struct Remote {
    process: LocalProcess,
    remote_pgid: Option<u32>,
    transport: (String, Vec<String>),
    marker: String,
    head: Option<Vec<u8>>,
    pending: Option<ProcEvent>,
    finished: bool,
}

impl ExternalProcess {
    fn remote(&mut self) -> &mut Remote {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Remote {
    /// One event of the local ssh, the pid line taken out of the head of stderr; `None`
    /// when there is nothing to pass on yet.
    async fn step(&mut self) -> Option<ProcEvent> {
        match self.process.next().await {
            ProcEvent::Output(Stream::Stderr, chunk) if self.head.is_some() => {
                let head = self.head.as_mut().expect("checked");
                head.extend_from_slice(&chunk);
                if let Some((pid, rest)) = take_pid_line(head, &self.marker) {
                    self.remote_pgid = pid;
                    self.head = None;
                    (!rest.is_empty()).then_some(ProcEvent::Output(Stream::Stderr, rest))
                } else if head.len() > 4096 {
                    let held = self.head.take().unwrap_or_default();
                    Some(ProcEvent::Output(Stream::Stderr, held))
                } else {
                    None
                }
            }
            ProcEvent::Exit(status) => {
                self.finished = true;
                if let Some(held) = self.head.take().filter(|h| !h.is_empty()) {
                    // Give back what was held, then the exit on the next call.
                    self.pending = Some(ProcEvent::Exit(status));
                    return Some(ProcEvent::Output(Stream::Stderr, held));
                }
                Some(ProcEvent::Exit(status))
            }
            other @ ProcEvent::Failed(_) => {
                self.finished = true;
                Some(other)
            }
            other => Some(other),
        }
    }

    async fn next(&mut self) -> ProcEvent {
        if let Some(event) = self.pending.take() {
            return event;
        }
        loop {
            if let Some(event) = self.step().await {
                return event;
            }
        }
    }

    async fn terminate(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        // Cancelled before the pid line came: it is the first thing the command prints,
        // so read on (bounded) until it is here.
        if self.remote_pgid.is_none() && self.head.is_some() {
            let _ = tokio::time::timeout(PID_WAIT, async {
                while self.remote_pgid.is_none() && self.head.is_some() {
                    if let Some(ProcEvent::Exit(_) | ProcEvent::Failed(_)) = self.step().await {
                        return;
                    }
                }
            })
            .await;
        }
        if let Some(pid) = self.remote_pgid {
            let (program, mut argv) = self.transport.clone();
            argv.pop();
            argv.push(login_shell_line(&terminate_script(pid)));
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::process::Command::new(program).args(argv).output(),
            )
            .await;
        }
        self.process.terminate().await;
    }
}

/// How long a cancelled command's pid line is waited for.
const PID_WAIT: Duration = Duration::from_secs(10);

#[async_trait]
impl Process for ExternalProcess {
    async fn next(&mut self) -> ProcEvent {
        self.remote().next().await
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ErrorKind> {
        self.remote().process.write_stdin(data).await
    }

    async fn close_stdin(&mut self) {
        self.remote().process.close_stdin().await
    }

    fn split_stdin(&mut self) -> Option<Box<dyn StdinWriter>> {
        self.remote().process.split_stdin()
    }

    async fn terminate(&mut self) {
        self.remote().terminate().await
    }
}

impl Drop for ExternalProcess {
    fn drop(&mut self) {
        let Some(mut remote) = self.0.take().filter(|r| !r.finished) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the local ssh's process group is still killed by its own drop
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        crate::terminations::register(wait);
        runtime.spawn(async move {
            remote.terminate().await;
            let _ = done.send(());
        });
    }
}
