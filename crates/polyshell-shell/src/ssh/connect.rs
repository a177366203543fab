//! Opening an SSH connection: TCP (or a forwarded channel through a bastion), handshake,
//! host key verification, public key authentication; then the connection's driver starts.

use super::connection::{Connection, OpenKind, Request};
use super::driver::{Driver, STDIN_CREDIT};
use super::known_hosts::{candidate_lines, host_label, Known};
use super::nonblocking::{retry, SocketFd};
use super::target::{HostKeyPolicy, Target};
use crate::error::ErrorKind;
use crate::process::ProcEvent;
use base64::Engine;
use ssh2::{CheckResult, HashType, KnownHostFileKind, MethodType, Session};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, Semaphore};

/// Connects to `target`, directly or through `via` (the last bastion's connection), and
/// starts the connection's driver.
pub(crate) async fn connect(
    target: &Target,
    via: Option<&Connection>,
) -> Result<Connection, ErrorKind> {
    let (fd, session) = session(target, via).await?;
    match target.keepalive {
        Some(interval) => session.set_keepalive(true, interval.as_secs().max(1) as u32),
        None => session.set_keepalive(false, 0),
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());
    let alive = Arc::new(AtomicBool::new(true));
    let next_id = Arc::new(AtomicU64::new(1));
    let opens = Arc::new(super::connection::OpenQueue::default());
    let driver = Driver {
        opens: opens.clone(),
        session,
        fd,
        host: target.alias.clone(),
        keepalive: target.keepalive,
        rx,
        wake: wake.clone(),
        alive: alive.clone(),
        pid_marker: pid_marker(),
        next_id: next_id.clone(),
    };
    tokio::spawn(driver.run());
    Ok(Connection {
        tx,
        wake,
        alive,
        next_id,
        host: target.alias.as_str().into(),
        opens,
    })
}

/// The marker of the pid line every command prints first: one per process, random, so that
/// a command's own output cannot fake it. One for every connection of the process, so that a
/// script written for a connection that was replaced (see the connection keeper) still
/// carries the marker its driver looks for.
pub(crate) fn pid_marker() -> Arc<str> {
    static MARKER: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    MARKER
        .get_or_init(|| format!("[polyshell-pid-{:016x}]", rand::random::<u64>()).into())
        .clone()
}

/// An authenticated session to `target`, in non-blocking mode, with its socket's readiness.
pub(crate) async fn session(
    target: &Target,
    via: Option<&Connection>,
) -> Result<(AsyncFd<SocketFd>, Session), ErrorKind> {
    let addr = target.addr();
    let timeout = target.connect_timeout;
    match tokio::time::timeout(timeout, establish(target, via)).await {
        Ok(result) => result,
        Err(_) => Err(ErrorKind::ConnectTimeout { addr, timeout }),
    }
}

async fn establish(
    target: &Target,
    via: Option<&Connection>,
) -> Result<(AsyncFd<SocketFd>, Session), ErrorKind> {
    let addr = target.addr();
    let mut session = Session::new().map_err(|e| ErrorKind::Handshake {
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    let raw_fd = match via {
        None => {
            let tcp = tokio::net::TcpStream::connect((target.hostname.as_str(), target.port))
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        ErrorKind::Refused { addr: addr.clone() }
                    }
                    _ => ErrorKind::Unreachable {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    },
                })?;
            let _ = tcp.set_nodelay(true);
            let tcp = tcp.into_std()?;
            tcp.set_nonblocking(true)?;
            let fd = tcp.as_raw_fd();
            session.set_tcp_stream(tcp);
            fd
        }
        Some(bastion) => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            ours.set_nonblocking(true)?;
            theirs.set_nonblocking(true)?;
            bridge(
                bastion,
                &target.hostname,
                target.port,
                tokio::net::UnixStream::from_std(theirs)?,
            );
            let fd = ours.as_raw_fd();
            session.set_tcp_stream(ours);
            fd
        }
    };
    session.set_blocking(false);
    // SAFETY: the session owns the socket and outlives this registration: every holder
    // of the pair drops the AsyncFd first (tuple order, field order in Driver).
    let fd = unsafe { AsyncFd::register(SocketFd(raw_fd)) }.map_err(std::io::Error::from)?;

    let known = candidate_lines(target);
    let known_types = known_key_types(&known.lines, target);
    if !known_types.is_empty() {
        // libssh2 compares against keys of any type: offer only the types we know for this
        // host, or a host recorded with ed25519 "mismatches" when RSA is negotiated.
        let _ = session.method_pref(MethodType::HostKey, &known_types.join(","));
    }
    let mut handshaking = session.clone();
    retry(&session, &fd, || handshaking.handshake())
        .await
        .map_err(|e| ErrorKind::Handshake {
            addr: addr.clone(),
            reason: e.message().to_owned(),
        })?;
    verify_host_key(&session, target, &known)?;
    super::auth::authenticate(&session, &fd, target).await?;
    tracing::debug!(host = %target.alias, addr = %addr, user = %target.user, "connected");
    Ok((fd, session))
}

/// Copies bytes between a local socket and a `direct-tcpip` channel of the bastion.
fn bridge(bastion: &Connection, host: &str, port: u16, sock: tokio::net::UnixStream) {
    let process = super::SshProcess::open(
        bastion,
        OpenKind::Forward {
            host: host.to_owned(),
            port,
        },
        super::EVENT_QUEUE,
    );
    tokio::spawn(async move {
        let Ok(mut process) = process else { return };
        let (mut read_half, mut write_half) = sock.into_split();
        let credit = process.credit.clone();
        let tx = process.conn.tx.clone();
        let id = process.id;
        let upstream = async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match read_half.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Request::Eof { id });
                        return;
                    }
                    Ok(n) => {
                        let Ok(permits) = credit.acquire_many(n as u32).await else {
                            return;
                        };
                        permits.forget();
                        if tx
                            .send(Request::Stdin {
                                id,
                                data: buf[..n].to_vec(),
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        };
        let downstream = async {
            loop {
                match process.next_event().await {
                    ProcEvent::Output(_, chunk) => {
                        if write_half.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    ProcEvent::Exit(_) | ProcEvent::Failed(_) => return,
                }
            }
        };
        tokio::select! {
            _ = upstream => {}
            _ = downstream => {}
        }
        process.finished = true;
    });
}

/// What libssh2 says of `key` for the host against these entries alone.
fn check_against(
    session: &Session,
    target: &Target,
    lines: &[Arc<str>],
    key: &[u8],
) -> Result<CheckResult, ErrorKind> {
    let mut known = session.known_hosts().map_err(|e| ErrorKind::Handshake {
        addr: target.addr(),
        reason: e.to_string(),
    })?;
    for line in lines {
        let _ = known.read_str(line, KnownHostFileKind::OpenSSH);
    }
    // The lines name the host by its label (`host`, `[host]:port` or the HostKeyAlias):
    // compared as a plain name, without libssh2 adding the port again.
    let label = host_label(target);
    if label.contains('\0') {
        return Err(ErrorKind::Handshake {
            addr: target.addr(),
            reason: "the host name has a NUL byte".into(),
        });
    }
    Ok(known.check(&label, key))
}

/// Key types recorded for this host (plain entries only).
fn known_key_types(lines: &[Arc<str>], target: &Target) -> Vec<String> {
    let wanted = host_label(target);
    let mut types = Vec::new();
    for line in lines {
        let mut fields = line.split_whitespace();
        let Some(hosts) = fields.next() else { continue };
        if hosts.split(',').any(|h| h == wanted) {
            match fields.next() {
                Some("ssh-rsa") => {
                    types.extend(["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"].map(String::from))
                }
                Some(other) => types.push(other.to_owned()),
                None => {}
            }
        }
    }
    types.dedup();
    types
}

fn fingerprint(session: &Session) -> String {
    match session.host_key_hash(HashType::Sha256) {
        Some(hash) => format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
        ),
        None => "fingerprint unknown".into(),
    }
}

fn verify_host_key(session: &Session, target: &Target, known: &Known) -> Result<(), ErrorKind> {
    let files = target
        .known_hosts
        .iter()
        .chain(&target.global_known_hosts)
        .filter(|p| p.exists() || target.known_hosts.first() == Some(*p))
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let host_label = host_label(target);
    if target.policy == HostKeyPolicy::Off {
        tracing::warn!(
            host = %host_label,
            "HOST KEY CHECKING IS OFF for {host_label}: the connection may be intercepted ({})",
            fingerprint(session)
        );
        return Ok(());
    }
    let (key, key_type) = session.host_key().ok_or_else(|| ErrorKind::Handshake {
        addr: target.addr(),
        reason: "the server sent no host key".into(),
    })?;
    // A revoked key is refused whatever the policy says of unknown keys (but `off`).
    if !known.revoked.is_empty()
        && matches!(
            check_against(session, target, &known.revoked, key)?,
            CheckResult::Match
        )
    {
        return Err(ErrorKind::HostKeyRevoked {
            host: host_label,
            fingerprint: fingerprint(session),
            known_hosts: files,
        });
    }
    let verdict = check_against(session, target, &known.lines, key)?;
    if matches!(verdict, CheckResult::NotFound | CheckResult::Failure)
        && !known.authorities.is_empty()
    {
        // A certificate authority vouches for this host, but libssh2 cannot check host
        // certificates: say so rather than "unknown key" (or recording it under accept-new).
        return Err(ErrorKind::HostCertificate {
            host: host_label,
            fingerprint: fingerprint(session),
            known_hosts: files,
        });
    }
    match verdict {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(ErrorKind::HostKeyChanged {
            host: host_label,
            fingerprint: fingerprint(session),
            known_hosts: files,
        }),
        CheckResult::NotFound | CheckResult::Failure
            if target.policy == HostKeyPolicy::AcceptNew =>
        {
            let type_name = match key_type {
                ssh2::HostKeyType::Rsa => "ssh-rsa",
                ssh2::HostKeyType::Dss => "ssh-dss",
                ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
                ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
                ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
                ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
                ssh2::HostKeyType::Unknown => "unknown",
            };
            let line = format!(
                "{host_label} {type_name} {}\n",
                base64::engine::general_purpose::STANDARD.encode(key)
            );
            if let Some(file) = target.known_hosts.first() {
                append(file, &line).map_err(|e| ErrorKind::Handshake {
                    addr: target.addr(),
                    reason: format!("cannot record the host key in {}: {e}", file.display()),
                })?;
            }
            tracing::warn!(host = %host_label, "recorded the new host key of {host_label} ({})", fingerprint(session));
            Ok(())
        }
        CheckResult::NotFound | CheckResult::Failure => Err(ErrorKind::HostKeyUnknown {
            host: host_label,
            fingerprint: fingerprint(session),
            known_hosts: files,
        }),
    }
}

fn append(file: &Path, line: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(line.as_bytes())
}

/// A credit pool for one channel's stdin.
pub(crate) fn new_credit() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(STDIN_CREDIT))
}
