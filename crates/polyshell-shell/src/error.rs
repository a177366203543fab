//! The errors a shell reports, each naming the site, what failed and where.

use std::time::Duration;

/// A command could not run to its end on `site`. A command that ran and exited non-zero is
/// not an error: its [`ExitStatus`](crate::ExitStatus) says so.
#[derive(Debug, thiserror::Error)]
#[error("{site}: {kind}")]
pub struct ShellError {
    /// The site (or host) the shell serves.
    pub site: String,
    pub kind: ErrorKind,
}

impl ShellError {
    pub fn new(site: impl Into<String>, kind: ErrorKind) -> ShellError {
        ShellError {
            site: site.into(),
            kind,
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot start local shell `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection refused by {addr}")]
    Refused { addr: String },
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("no SSH session with {addr} within the connect timeout of {}s (is it an SSH server, and up?)", .timeout.as_secs_f64())]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("SSH handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error("the host key of {host} is not known ({fingerprint}); verify it, then add it to {known_hosts} (e.g. with ssh-keyscan), or use the accept-new host key policy")]
    HostKeyUnknown {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("THE HOST KEY OF {host} HAS CHANGED ({fingerprint}), it no longer matches {known_hosts}: someone may be intercepting the connection. If the host was reinstalled, remove its old key (ssh-keygen -R) and connect again")]
    HostKeyChanged {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("THE HOST KEY OF {host} IS REVOKED ({fingerprint}): an @revoked line in {known_hosts} lists it, and it is never accepted. The host may be compromised, or is still using a key that was retired")]
    HostKeyRevoked {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("the host key of {host} ({fingerprint}) is vouched for only by an @cert-authority line in {known_hosts}, and polyshell's SSH library (libssh2) cannot check host certificates: add the host's own key to known_hosts (ssh-keyscan), or reach the site with the system ssh (site option ssh = \"ssh\")")]
    HostCertificate {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("authentication as `{user}` on {host} failed; tried {tried} (password login is not supported)")]
    AuthFailed {
        user: String,
        host: String,
        tried: String,
    },
    /// The bastion (ProxyJump) in front of the site could not be reached; every site behind
    /// it fails with the same reason, and the bastion is not tried again for each of them.
    #[error("cannot connect through the bastion {bastion}: {reason}")]
    Bastion { bastion: String, reason: String },
    /// A channel of the site's connection failed (the connection itself still works).
    #[error("SSH channel on {host} failed: {reason}")]
    Channel { host: String, reason: String },
    /// The command's input could not be written: it ended, or its connection did.
    #[error("the command's input is closed (the command or its connection ended)")]
    StdinClosed,
    #[error("connection to {host} lost: {reason}")]
    ConnectionLost { host: String, reason: String },
    #[error("command timed out after {}s and was terminated", .0.as_secs_f64())]
    Timeout(Duration),
    /// A command with input that runs `sudo` after its start.
    #[error("a command with input cannot run sudo after its start (sudo reads its password from the same input): start the command with sudo, or use a sudo step")]
    SudoWithInput,
    /// sudo asked again after the agent's answer (the attempt is run again with a new one).
    #[error("sudo rejected the password")]
    SudoRejected,
    /// The password agent had no password to give (rejected too often, aborted, no source).
    #[error(transparent)]
    SudoPassword(#[from] polyshell_auth::AgentError),
    /// An ssh_config file could not be read or parsed.
    #[error("ssh_config {}: {reason}", .path.display())]
    ConfigFile {
        path: std::path::PathBuf,
        reason: String,
    },
    /// An ssh_config option (or a site's SSH option) has a value polyshell cannot use.
    #[error("ssh_config: {option} {value}: {reason}")]
    ConfigValue {
        option: String,
        value: String,
        reason: String,
    },
    /// A command's environment names a variable no shell can set.
    #[error("`{0}` is not a valid environment variable name")]
    EnvName(String),
    /// A local file of a transfer could not be read or written.
    #[error("file transfer failed: {}: {source}", .path.display())]
    TransferIo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What a site sent would land outside the destination (or is no archive at all).
    #[error("file transfer refused: {}: {reason}", .path.display())]
    TransferRefused {
        path: std::path::PathBuf,
        reason: &'static str,
    },
    /// The command on the site that packs or unpacks the transfer failed.
    #[error("file transfer failed: {what} failed{}", if .stderr.is_empty() { format!(" ({status})") } else { format!(": {stderr}") })]
    RemoteTransfer {
        what: String,
        status: crate::ExitStatus,
        stderr: String,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
