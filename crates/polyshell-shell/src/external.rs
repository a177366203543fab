//! The system OpenSSH client as a transport (site option `ssh`), for what libssh2 cannot do:
//! ProxyCommand, GSSAPI, ControlMaster, hardware keys. Each command is one `ssh` process.

use crate::error::ErrorKind;
use crate::local::{self, LocalProcess};
use crate::output::Stream;
use crate::process::{ProcEvent, Process};
use crate::{Command, Transport};
use async_trait::async_trait;
use std::path::Path;

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
        let script = command.remote_script(Some(&self.marker));
        // Environment and directory travel inside the script, not to the local ssh.
        let process = local::spawn(&self.program, &self.argv(&script))?;
        Ok(Box::new(ExternalProcess {
            process,
            remote_pgid: None,
            transport: (self.program.clone(), self.argv("")),
            marker: self.marker.clone(),
            head: Some(Vec::new()),
            pending: None,
        }))
    }

    async fn connect(&self) -> Result<(), ErrorKind> {
        Ok(())
    }

    async fn upload(&self, local: &Path, remote: &str) -> Result<(), ErrorKind> {
        self.scp(&[
            local.display().to_string(),
            format!("{}:{remote}", self.host),
        ])
        .await
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<(), ErrorKind> {
        self.scp(&[
            format!("{}:{remote}", self.host),
            local.display().to_string(),
        ])
        .await
    }

    fn describe(&self) -> String {
        format!("{} {}", self.program, self.host)
    }
}

impl ExternalSsh {
    async fn scp(&self, paths: &[String]) -> Result<(), ErrorKind> {
        let program = if self.program.ends_with("ssh") {
            format!("{}scp", self.program.trim_end_matches("ssh"))
        } else {
            "scp".to_owned()
        };
        let mut argv: Vec<String> = self.args.clone();
        argv.extend(["-r", "-p", "-q", "-o", "BatchMode=yes"].map(String::from));
        argv.extend(paths.iter().cloned());
        let out = tokio::process::Command::new(&program)
            .args(&argv)
            .output()
            .await
            .map_err(|source| ErrorKind::Spawn {
                program: program.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ErrorKind::Transfer(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ))
        }
    }
}

struct ExternalProcess {
    process: LocalProcess,
    remote_pgid: Option<u32>,
    transport: (String, Vec<String>),
    marker: String,
    head: Option<Vec<u8>>,
    pending: Option<ProcEvent>,
}

#[async_trait]
impl Process for ExternalProcess {
    async fn next(&mut self) -> ProcEvent {
        if let Some(event) = self.pending.take() {
            return event;
        }
        loop {
            match self.process.next().await {
                ProcEvent::Output(Stream::Stderr, chunk) if self.head.is_some() => {
                    let head = self.head.as_mut().expect("checked");
                    head.extend_from_slice(&chunk);
                    if let Some((pid, rest)) = crate::command::take_pid_line(head, &self.marker) {
                        self.remote_pgid = pid;
                        self.head = None;
                        if !rest.is_empty() {
                            return ProcEvent::Output(Stream::Stderr, rest);
                        }
                    } else if head.len() > 4096 {
                        let held = self.head.take().unwrap_or_default();
                        return ProcEvent::Output(Stream::Stderr, held);
                    }
                }
                ProcEvent::Exit(status) => {
                    if let Some(held) = self.head.take().filter(|h| !h.is_empty()) {
                        // Give back what was held, then the exit on the next call.
                        self.pending = Some(ProcEvent::Exit(status));
                        return ProcEvent::Output(Stream::Stderr, held);
                    }
                    return ProcEvent::Exit(status);
                }
                other => return other,
            }
        }
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ErrorKind> {
        self.process.write_stdin(data).await
    }

    async fn close_stdin(&mut self) {
        self.process.close_stdin().await
    }

    async fn terminate(&mut self) {
        if let Some(pid) = self.remote_pgid {
            let (program, mut argv) = self.transport.clone();
            argv.pop();
            argv.push(format!(
                "kill -TERM -- -{pid} 2>/dev/null; sleep 1; kill -KILL -- -{pid} 2>/dev/null; true"
            ));
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::process::Command::new(program).args(argv).output(),
            )
            .await;
        }
        self.process.terminate().await;
    }
}
