//! The local transport: commands run as `sh -c COMMAND` child processes of this one.

use crate::{ExitStatus, Output, ShellError};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

#[derive(Debug, Clone)]
pub(crate) struct LocalShell {
    program: String,
}

impl LocalShell {
    pub(crate) fn new(program: &str) -> Self {
        LocalShell {
            program: program.to_owned(),
        }
    }

    pub(crate) async fn run(&self, command: &str) -> Result<Output, ShellError> {
        let child = tokio::process::Command::new(&self.program)
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ShellError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        let out = child.wait_with_output().await?;
        let status = match (out.status.code(), out.status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        };
        Ok(Output {
            status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
