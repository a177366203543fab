//! The errors a shell reports, each naming the site, what failed and where.

use std::time::Duration;

/// A command could not run to its end on `site`. A command that ran and exited non-zero is
/// not an error: its [`ExitStatus`](crate::ExitStatus) says so.
#[derive(Debug, thiserror::Error)]
#[error("{site}: {kind}")]
pub struct ShellError {
    /// The site (or host) the shell serves.
    pub site: String,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl ShellError {
    /// An error of `kind` on `site`.
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
    /// The local shell could not be started.
    #[error("cannot start local shell `{program}`: {source}")]
    Spawn {
        /// The shell program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    #[error("connection refused by {addr}")]
    /// Nothing listens on the address.
    Refused {
        /// The address connected to, `host:port`.
        addr: String,
    },
    #[error("cannot reach {addr}: {reason}")]
    /// The address cannot be reached (no route, DNS, ...).
    Unreachable {
        /// The address connected to, `host:port`.
        addr: String,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    #[error("no SSH session with {addr} within the connect timeout of {}s (is it an SSH server, and up?)", .timeout.as_secs_f64())]
    /// No SSH session within the connect timeout.
    ConnectTimeout {
        /// The address connected to, `host:port`.
        addr: String,
        /// The time limit.
        timeout: Duration,
    },
    #[error("SSH handshake with {addr} failed: {reason}")]
    /// The SSH handshake failed (key exchange, protocol).
    Handshake {
        /// The address connected to, `host:port`.
        addr: String,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    /// The host key is not in known_hosts (strict policy).
    #[error("the host key of {host} is not known ({fingerprint}); verify it, then add it to {known_hosts} (e.g. with ssh-keyscan), or use the accept-new host key policy")]
    HostKeyUnknown {
        /// The host, as named in messages (for host keys: its known_hosts name).
        host: String,
        /// The server's host key fingerprint (`SHA256:...`).
        fingerprint: String,
        /// The known_hosts files consulted.
        known_hosts: String,
    },
    /// The host key differs from the one known_hosts records for the host.
    #[error("THE HOST KEY OF {host} HAS CHANGED ({fingerprint}), it no longer matches {known_hosts}: someone may be intercepting the connection. If the host was reinstalled, remove its old key (ssh-keygen -R) and connect again")]
    HostKeyChanged {
        /// The host, as named in messages (for host keys: its known_hosts name).
        host: String,
        /// The server's host key fingerprint (`SHA256:...`).
        fingerprint: String,
        /// The known_hosts files consulted.
        known_hosts: String,
    },
    /// The host key is listed `@revoked`.
    #[error("THE HOST KEY OF {host} IS REVOKED ({fingerprint}): an @revoked line in {known_hosts} lists it, and it is never accepted. The host may be compromised, or is still using a key that was retired")]
    HostKeyRevoked {
        /// The host, as named in messages (for host keys: its known_hosts name).
        host: String,
        /// The server's host key fingerprint (`SHA256:...`).
        fingerprint: String,
        /// The known_hosts files consulted.
        known_hosts: String,
    },
    /// Only an `@cert-authority` line names the host; libssh2 cannot check certificates.
    #[error("the host key of {host} ({fingerprint}) is vouched for only by an @cert-authority line in {known_hosts}, and polyshell's SSH library (libssh2) cannot check host certificates: add the host's own key to known_hosts (ssh-keyscan), or reach the site with the system ssh (site option ssh = \"ssh\")")]
    HostCertificate {
        /// The host, as named in messages (for host keys: its known_hosts name).
        host: String,
        /// The server's host key fingerprint (`SHA256:...`).
        fingerprint: String,
        /// The known_hosts files consulted.
        known_hosts: String,
    },
    /// No key was accepted.
    #[error("authentication as `{user}` on {host} failed; tried {tried} (password login is not supported)")]
    AuthFailed {
        /// The user name.
        user: String,
        /// The host, as named in messages (for host keys: its known_hosts name).
        host: String,
        /// Every key offered and why each failed.
        tried: String,
    },
    /// The bastion (ProxyJump) in front of the site could not be reached; every site behind
    /// it fails with the same reason, and the bastion is not tried again for each of them.
    #[error("cannot connect through the bastion {bastion}: {reason}")]
    /// The bastion in front of the site could not be reached.
    Bastion {
        /// The bastion (a `ProxyJump` host).
        bastion: String,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    /// A channel of the site's connection failed (the connection itself still works).
    #[error("SSH channel on {host} failed: {reason}")]
    /// A channel failed; the connection still works.
    Channel {
        /// The host, as named in messages (for host keys: its known_hosts name).
        host: String,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    /// The command's input could not be written: it ended, or its connection did.
    #[error("the command's input is closed (the command or its connection ended)")]
    StdinClosed,
    #[error("connection to {host} lost: {reason}")]
    /// The connection died (keepalives unanswered, the server closed it).
    ConnectionLost {
        /// The host, as named in messages (for host keys: its known_hosts name).
        host: String,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    /// The connection died before the command was sent: it did not run, and may be started
    /// again on a new connection (the connection keeper does so by itself).
    #[error("connection to {host} lost before the command started: {reason}")]
    LostBeforeStart {
        /// The host, as named in messages.
        host: String,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    /// The connection keeper (`--persist`) could not be reached or started, or went away.
    #[error("connection keeper: {0}")]
    Keeper(String),
    /// The command ran past its time limit and was terminated.
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
        /// The file or directory.
        path: std::path::PathBuf,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    /// An ssh_config option (or a site's SSH option) has a value polyshell cannot use.
    #[error("ssh_config: {option} {value}: {reason}")]
    ConfigValue {
        /// The option's name.
        option: String,
        /// Its value.
        value: String,
        /// What failed, as the library, the server or the system said it.
        reason: String,
    },
    /// A command's environment names a variable no shell can set.
    #[error("`{0}` is not a valid environment variable name")]
    EnvName(String),
    /// A local file of a transfer could not be read or written.
    #[error("file transfer failed: {}: {source}", .path.display())]
    TransferIo {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// What a site sent would land outside the destination (or is no archive at all).
    #[error("file transfer refused: {}: {reason}", .path.display())]
    TransferRefused {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What failed, as the library, the server or the system said it.
        reason: &'static str,
    },
    /// The command on the site that packs or unpacks the transfer failed.
    #[error("file transfer failed: {what} failed{}", if .stderr.is_empty() { format!(" ({status})") } else { format!(": {stderr}") })]
    RemoteTransfer {
        /// What the command was for (`upload to PATH`).
        what: String,
        /// How it ended.
        status: crate::ExitStatus,
        /// What it printed on its standard error (trimmed).
        stderr: String,
    },
    /// A local I/O error (spawning, reading, writing).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
