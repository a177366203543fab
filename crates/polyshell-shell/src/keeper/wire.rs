//! The keeper's protocol: frames of a little-endian `u32` length and a bincode message, over
//! a unix stream socket. A client sends [`Ask`]s and reads [`Tell`]s; every message names
//! the connection (`conn`) or channel (`chan`) it is about, numbers the client chose.

use crate::error::ErrorKind;
use crate::output::{ExitStatus, Stream};
use crate::process::ProcEvent;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped whenever a message changes: a keeper of another version is told to go away.
pub(crate) const VERSION: u32 = 2;
/// No frame is larger (output and input travel in pieces of at most 256 KiB).
const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// What a site's options are, as the keeper needs them to connect (paths made absolute by
/// the client, the client's ssh-agent socket instead of the keeper's environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireOptions {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// 0 strict, 1 accept-new, 2 off; `None`: ssh_config's.
    pub policy: Option<u8>,
    pub connect_timeout_ms: Option<u64>,
    pub keepalive_ms: Option<u64>,
    pub proxy_jump: Option<String>,
    /// The client's `SSH_AUTH_SOCK`.
    pub agent_socket: Option<PathBuf>,
}

/// Client to keeper.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Ask {
    Hello {
        version: u32,
    },
    /// Use (or make) the kept connection for these options, kept `persist_ms` after its last use.
    Connect {
        conn: u64,
        options: WireOptions,
        persist_ms: u64,
    },
    /// This client no longer uses connection `conn`.
    Release {
        conn: u64,
    },
    /// Run `script` on connection `conn` as channel `chan`. `plain`: the same command
    /// without the login shell's line and the pid line, when it takes no input, has no
    /// terminal and starts nothing in the background: the keeper may hand it to the
    /// connection's runner instead (see `ssh/runner.rs`).
    Open {
        conn: u64,
        chan: u64,
        script: String,
        pty: bool,
        bulk: bool,
        plain: Option<String>,
    },
    Stdin {
        chan: u64,
        data: Vec<u8>,
    },
    Eof {
        chan: u64,
    },
    /// The client consumed `bytes` of the channel's output: the keeper may send that much more.
    Consumed {
        chan: u64,
        bytes: u64,
    },
    Terminate {
        chan: u64,
    },
    List,
    /// Close the idle kept connections whose site or host matches one of `patterns` (all when
    /// empty).
    Close {
        patterns: Vec<String>,
    },
}

/// Keeper to client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Tell {
    Hello {
        version: u32,
    },
    Connected {
        conn: u64,
        marker: String,
    },
    /// `needs_prompt`: the connection needs a passphrase typed, which the keeper never asks.
    ConnectFailed {
        conn: u64,
        error: WireError,
        needs_prompt: bool,
    },
    Output {
        chan: u64,
        stderr: bool,
        data: Vec<u8>,
    },
    Exit {
        chan: u64,
        status: WireStatus,
    },
    Failed {
        chan: u64,
        error: WireError,
    },
    /// `bytes` of the channel's input were written: the client may send that much more.
    Credit {
        chan: u64,
        bytes: u64,
    },
    /// The channel's command was terminated (or had ended).
    Terminated {
        chan: u64,
    },
    Listing(Vec<KeptInfo>),
    Closed {
        count: u64,
    },
    /// The client is not served (another user).
    Refused {
        reason: String,
    },
}

/// A kept connection as `polyshell connections` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptInfo {
    /// The site's name (host name or ssh_config alias).
    pub site: String,
    /// `user@hostname:port`, and the bastions it goes through.
    pub host: String,
    /// Seconds since it was opened.
    pub age_secs: u64,
    /// Seconds since it was last used (0 while in use).
    pub idle_secs: u64,
    /// How many invocations use it now.
    pub in_use: u64,
    /// Seconds of idleness after which it is closed.
    pub persist_secs: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum WireStatus {
    Code(i32),
    Signal(i32),
}

impl From<ExitStatus> for WireStatus {
    fn from(status: ExitStatus) -> WireStatus {
        match status {
            ExitStatus::Code(c) => WireStatus::Code(c),
            ExitStatus::Signal(s) => WireStatus::Signal(s),
        }
    }
}

impl From<WireStatus> for ExitStatus {
    fn from(status: WireStatus) -> ExitStatus {
        match status {
            WireStatus::Code(c) => ExitStatus::Code(c),
            WireStatus::Signal(s) => ExitStatus::Signal(s),
        }
    }
}

/// An [`ErrorKind`] across the socket: the kinds a connection or channel fails with keep
/// their kind; any other arrives as its message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WireError {
    Refused {
        addr: String,
    },
    Unreachable {
        addr: String,
        reason: String,
    },
    ConnectTimeout {
        addr: String,
        timeout_ms: u64,
    },
    Handshake {
        addr: String,
        reason: String,
    },
    HostKeyUnknown {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    HostKeyChanged {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    HostKeyRevoked {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    HostCertificate {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    AuthFailed {
        user: String,
        host: String,
        tried: String,
    },
    Bastion {
        bastion: String,
        reason: String,
    },
    Channel {
        host: String,
        reason: String,
    },
    ConnectionLost {
        host: String,
        reason: String,
    },
    LostBeforeStart {
        host: String,
        reason: String,
    },
    StdinClosed,
    Other(String),
}

impl From<&ErrorKind> for WireError {
    fn from(kind: &ErrorKind) -> WireError {
        use ErrorKind as K;
        let s = |v: &String| v.clone();
        match kind {
            K::Refused { addr } => WireError::Refused { addr: s(addr) },
            K::Unreachable { addr, reason } => WireError::Unreachable {
                addr: s(addr),
                reason: s(reason),
            },
            K::ConnectTimeout { addr, timeout } => WireError::ConnectTimeout {
                addr: s(addr),
                timeout_ms: timeout.as_millis() as u64,
            },
            K::Handshake { addr, reason } => WireError::Handshake {
                addr: s(addr),
                reason: s(reason),
            },
            K::HostKeyUnknown {
                host,
                fingerprint,
                known_hosts,
            } => WireError::HostKeyUnknown {
                host: s(host),
                fingerprint: s(fingerprint),
                known_hosts: s(known_hosts),
            },
            K::HostKeyChanged {
                host,
                fingerprint,
                known_hosts,
            } => WireError::HostKeyChanged {
                host: s(host),
                fingerprint: s(fingerprint),
                known_hosts: s(known_hosts),
            },
            K::HostKeyRevoked {
                host,
                fingerprint,
                known_hosts,
            } => WireError::HostKeyRevoked {
                host: s(host),
                fingerprint: s(fingerprint),
                known_hosts: s(known_hosts),
            },
            K::HostCertificate {
                host,
                fingerprint,
                known_hosts,
            } => WireError::HostCertificate {
                host: s(host),
                fingerprint: s(fingerprint),
                known_hosts: s(known_hosts),
            },
            K::AuthFailed { user, host, tried } => WireError::AuthFailed {
                user: s(user),
                host: s(host),
                tried: s(tried),
            },
            K::Bastion { bastion, reason } => WireError::Bastion {
                bastion: s(bastion),
                reason: s(reason),
            },
            K::Channel { host, reason } => WireError::Channel {
                host: s(host),
                reason: s(reason),
            },
            K::ConnectionLost { host, reason } => WireError::ConnectionLost {
                host: s(host),
                reason: s(reason),
            },
            K::LostBeforeStart { host, reason } => WireError::LostBeforeStart {
                host: s(host),
                reason: s(reason),
            },
            K::StdinClosed => WireError::StdinClosed,
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for ErrorKind {
    fn from(wire: WireError) -> ErrorKind {
        use ErrorKind as K;
        match wire {
            WireError::Refused { addr } => K::Refused { addr },
            WireError::Unreachable { addr, reason } => K::Unreachable { addr, reason },
            WireError::ConnectTimeout { addr, timeout_ms } => K::ConnectTimeout {
                addr,
                timeout: std::time::Duration::from_millis(timeout_ms),
            },
            WireError::Handshake { addr, reason } => K::Handshake { addr, reason },
            WireError::HostKeyUnknown {
                host,
                fingerprint,
                known_hosts,
            } => K::HostKeyUnknown {
                host,
                fingerprint,
                known_hosts,
            },
            WireError::HostKeyChanged {
                host,
                fingerprint,
                known_hosts,
            } => K::HostKeyChanged {
                host,
                fingerprint,
                known_hosts,
            },
            WireError::HostKeyRevoked {
                host,
                fingerprint,
                known_hosts,
            } => K::HostKeyRevoked {
                host,
                fingerprint,
                known_hosts,
            },
            WireError::HostCertificate {
                host,
                fingerprint,
                known_hosts,
            } => K::HostCertificate {
                host,
                fingerprint,
                known_hosts,
            },
            WireError::AuthFailed { user, host, tried } => K::AuthFailed { user, host, tried },
            WireError::Bastion { bastion, reason } => K::Bastion { bastion, reason },
            WireError::Channel { host, reason } => K::Channel { host, reason },
            WireError::ConnectionLost { host, reason } => K::ConnectionLost { host, reason },
            WireError::LostBeforeStart { host, reason } => K::LostBeforeStart { host, reason },
            WireError::StdinClosed => K::StdinClosed,
            WireError::Other(message) => K::Keeper(message),
        }
    }
}

/// A process event as the keeper sends it for channel `chan`.
pub(crate) fn tell_event(chan: u64, event: &ProcEvent) -> Tell {
    match event {
        ProcEvent::Output(stream, data) => Tell::Output {
            chan,
            stderr: *stream == Stream::Stderr,
            data: data.clone(),
        },
        ProcEvent::Exit(status) => Tell::Exit {
            chan,
            status: (*status).into(),
        },
        ProcEvent::Failed(kind) => Tell::Failed {
            chan,
            error: kind.into(),
        },
    }
}

/// Writes one message as a frame.
pub(crate) async fn write<T: Serialize>(
    out: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> std::io::Result<()> {
    out.write_all(&frame(message)?).await
}

/// One message as a frame's bytes.
pub(crate) fn frame<T: Serialize>(message: &T) -> std::io::Result<Vec<u8>> {
    let body = bincode::serialize(message).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(body.len() + 4);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Reads one message; `None` at the end of the stream.
pub(crate) async fn read<T: for<'de> Deserialize<'de>>(
    input: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    input.read_exact(&mut body).await?;
    bincode::deserialize(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
