//! What to run: the shell script, its environment, working directory, input and limits.

use crate::output::DEFAULT_CAPTURE_LIMIT;
use std::time::Duration;

/// A command for a [`Shell`](crate::Shell): a script for the site's shell plus options.
///
/// `&str` and `String` convert into a command; a list of commands (`["a", "b"]`, `Vec`)
/// converts into one script joined with ` && `, as in the original Polyshell.
///
/// ```
/// use polyshell_shell::Command;
/// let cmd = Command::from(["cd /srv", "make"]).env("CC", "clang").timeout_secs(60);
/// assert_eq!(cmd.script(), "cd /srv && make");
/// ```
#[derive(Debug, Clone)]
pub struct Command {
    pub(crate) script: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<String>,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) capture_limit: usize,
    pub(crate) pty: bool,
    /// A bulk data stream (a transfer): the transport may buffer more of its output.
    pub(crate) bulk: bool,
    /// Set by [`Shell::run`](crate::Shell::run) for a command without input: its stdin is
    /// closed at once and nothing is ever written to it.
    pub(crate) input_closed: bool,
}

impl Command {
    /// A command running `script` under `/bin/sh -c`, with no input, environment or limit.
    pub fn new(script: impl Into<String>) -> Command {
        Command {
            script: script.into(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: None,
            capture_limit: DEFAULT_CAPTURE_LIMIT,
            pty: false,
            bulk: false,
            input_closed: false,
        }
    }

    /// The script as the site's shell gets it (before environment and directory set-up).
    pub fn script(&self) -> &str {
        &self.script
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Command {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the command in `dir`; the command fails if `dir` does not exist.
    pub fn cwd(mut self, dir: impl Into<String>) -> Command {
        self.cwd = Some(dir.into());
        self
    }

    /// Feeds `bytes` to the command's standard input, then closes it. Without this the
    /// command's input is empty (closed at once), so nothing ever waits on it.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Command {
        self.stdin = Some(bytes.into());
        self
    }

    /// Terminates the command (its whole process group, on the site) if it runs longer than
    /// `timeout`. The run then returns an error ([`ErrorKind::Timeout`](crate::ErrorKind)),
    /// not an [`Output`](crate::Output): what it printed went to the shell's sink, if any.
    pub fn timeout(mut self, timeout: Duration) -> Command {
        self.timeout = Some(timeout);
        self
    }

    /// Terminates the command after `secs` seconds (see [`Command::timeout`]).
    pub fn timeout_secs(self, secs: u64) -> Command {
        self.timeout(Duration::from_secs(secs))
    }

    /// Keeps at most `bytes` of each of stdout and stderr in the [`Output`](crate::Output);
    /// the rest still streams to the sink.
    pub fn capture_limit(mut self, bytes: usize) -> Command {
        self.capture_limit = bytes;
        self
    }

    /// Runs the command on a pseudo-terminal (SSH only), as hosts with sudo's `requiretty`
    /// need. stdout and stderr then arrive merged on stdout, lines ending in `\r\n`.
    pub fn pty(mut self, on: bool) -> Command {
        self.pty = on;
        self
    }

    /// Marks the command as a bulk data stream (a transfer).
    pub(crate) fn bulk(mut self) -> Command {
        self.bulk = true;
        self
    }

    /// Replaces the script, keeping the options.
    pub fn with_script(mut self, script: impl Into<String>) -> Command {
        self.script = script.into();
        self
    }

    /// The script with its environment and directory set up, for a POSIX shell on the far
    /// side (SSH), where they cannot be set from outside. Values are quoted as data.
    pub(crate) fn remote_script(&self, pid_marker: Option<&str>) -> String {
        let mut s = String::new();
        if let Some(marker) = pid_marker {
            // The login shell is the session leader: its pid is the process group that a
            // cancellation signals.
            s.push_str(&format!("printf '%s%d\\n' {} \"$$\" >&2\n", quote(marker)));
        }
        for (k, v) in &self.env {
            s.push_str(&format!("export {k}={}\n", quote(v)));
        }
        if let Some(dir) = &self.cwd {
            s.push_str(&format!("cd {} || exit 1\n", quote(dir)));
        }
        s.push_str(&self.script);
        s
    }
}

/// The line an SSH server hands to the user's login shell: `exec /bin/sh -c SCRIPT`, so that
/// the script runs under a POSIX `sh` whatever the login shell is (dash, bash, busybox, zsh,
/// fish, ...). The login shell only has to parse one `exec` of one quoted word; the quoting
/// ([`portable_quote`]) reads the same in POSIX shells, zsh and fish. `exec` keeps the pid,
/// so `$$` in the script is still the session leader's pid (the process group to signal).
pub(crate) fn login_shell_line(script: &str) -> String {
    format!("exec /bin/sh -c {}", portable_quote(script))
}

/// Quotes `s` as one word that POSIX shells, zsh and fish all read back as `s`: runs of
/// ordinary characters in single quotes, and each `'` and `\` outside quotes as `\'` and
/// `\\` (fish, unlike POSIX, treats a backslash inside single quotes as an escape).
pub(crate) fn portable_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut in_quotes = false;
    for c in s.chars().filter(|&c| c != '\0') {
        if c == '\'' || c == '\\' {
            if in_quotes {
                out.push('\'');
                in_quotes = false;
            }
            out.push('\\');
            out.push(c);
        } else {
            if !in_quotes {
                out.push('\'');
                in_quotes = true;
            }
            out.push(c);
        }
    }
    if in_quotes {
        out.push('\'');
    }
    if out.is_empty() {
        out.push_str("''");
    }
    out
}

/// The POSIX script that terminates process group `pgid`: TERM, up to 2 s for it to go,
/// then KILL. Plain POSIX `kill -SIG -PGID` (dash's `kill` rejects `kill -- -PGID`).
pub(crate) fn terminate_script(pgid: u32) -> String {
    format!(
        "kill -TERM -{pgid} 2>/dev/null; i=0; while kill -0 -{pgid} 2>/dev/null && [ $i -lt 20 ]; \
         do sleep 0.1; i=$((i+1)); done; kill -KILL -{pgid} 2>/dev/null; true"
    )
}

/// Finds the pid line (`MARKER<pid>\n`, printed by [`Command::remote_script`]) in the head
/// of a command's output. `None` while the line is not complete yet; then the pid (if it
/// parsed) and the bytes around the line, which are the command's own output.
pub(crate) fn take_pid_line(head: &[u8], marker: &str) -> Option<(Option<u32>, Vec<u8>)> {
    let marker = marker.as_bytes();
    let at = memchr::memmem::find(head, marker)?;
    let end = at + memchr::memchr(b'\n', &head[at..])?;
    let pid = std::str::from_utf8(&head[at + marker.len()..end])
        .ok()
        .and_then(|d| d.trim().parse().ok());
    let mut rest = head[..at].to_vec();
    rest.extend_from_slice(&head[end + 1..]);
    Some((pid, rest))
}

/// Quotes `s` as one word of data for a POSIX shell.
pub fn quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", s.replace('\0', "").replace('\'', "'\\''")))
}

impl From<&str> for Command {
    fn from(s: &str) -> Command {
        Command::new(s)
    }
}

impl From<String> for Command {
    fn from(s: String) -> Command {
        Command::new(s)
    }
}

impl From<&String> for Command {
    fn from(s: &String) -> Command {
        Command::new(s.as_str())
    }
}

impl<S: AsRef<str>> From<&[S]> for Command {
    fn from(list: &[S]) -> Command {
        Command::new(
            list.iter()
                .map(|s| s.as_ref())
                .collect::<Vec<_>>()
                .join(" && "),
        )
    }
}

impl<S: AsRef<str>, const N: usize> From<[S; N]> for Command {
    fn from(list: [S; N]) -> Command {
        Command::from(&list[..])
    }
}

impl<S: AsRef<str>> From<Vec<S>> for Command {
    fn from(list: Vec<S>) -> Command {
        Command::from(&list[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_line_is_found_and_cut_out() {
        assert_eq!(take_pid_line(b"[m]12", "[m]"), None, "not a whole line yet");
        assert_eq!(
            take_pid_line(b"before\n[m]4242\nafter", "[m]"),
            Some((Some(4242), b"before\nafter".to_vec()))
        );
        assert_eq!(take_pid_line(b"[m]x\n", "[m]"), Some((None, Vec::new())));
    }

    #[test]
    fn portable_quote_marks_quotes_and_backslashes_outside_single_quotes() {
        assert_eq!(portable_quote(""), "''");
        assert_eq!(portable_quote("a b"), "'a b'");
        assert_eq!(portable_quote("it's"), "'it'\\''s'");
        assert_eq!(portable_quote("a\\b"), "'a'\\\\'b'");
        assert_eq!(portable_quote("'"), "\\'");
        assert_eq!(login_shell_line("echo $$"), "exec /bin/sh -c 'echo $$'");
    }

    #[test]
    fn portable_quote_reads_back_the_same_in_every_installed_shell() {
        // The shells every Debian machine has; zsh, fish and busybox are login shells of the
        // fleet, where the conformance suite runs every transport behaviour through sshd.
        let script = "printf '%s|' \"a\\\\b\" 'it'\"'\"'s' \"\\$HOME\" 'tab\tx' \"x\ny\" '!*?~'";
        let expected = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .output()
            .unwrap()
            .stdout;
        assert!(!expected.is_empty());
        for shell in ["/bin/sh", "/bin/bash", "/bin/dash"] {
            let out = std::process::Command::new(shell)
                .args(["-c", &login_shell_line(script)])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&expected),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn remote_script_quotes_values_as_data() {
        let cmd = Command::new("echo $A")
            .env("A", "x'; rm -rf /")
            .cwd("/tmp/a b");
        let script = cmd.remote_script(Some("M"));
        assert_eq!(
            script,
            "printf '%s%d\\n' M \"$$\" >&2\nexport A=\"x'; rm -rf /\"\ncd '/tmp/a b' || exit 1\necho $A"
        );
    }
}
