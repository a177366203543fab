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
    #[error("SSH channel failed: {0}")]
    Channel(String),
    #[error("connection to {host} lost: {reason}")]
    ConnectionLost { host: String, reason: String },
    #[error("command timed out after {}s and was terminated", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("{0}")]
    Sudo(String),
    #[error("ssh_config: {0}")]
    Config(String),
    #[error("file transfer failed: {0}")]
    Transfer(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
