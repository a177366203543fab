//! libssh2 in non-blocking mode on tokio: the socket's readiness, and calls retried until
//! they stop saying "would block"; which errors end a connection.

use ssh2::{BlockDirections, Session};
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::unix::AsyncFd;

/// libssh2's "would block".
const EAGAIN: i32 = libssh2_sys::LIBSSH2_ERROR_EAGAIN;

/// The session's socket, borrowed for readiness only (the session owns and closes it).
pub(crate) struct SocketFd(pub(crate) RawFd);

impl AsRawFd for SocketFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

pub(crate) fn is_eagain(err: &ssh2::Error) -> bool {
    matches!(err.code(), ssh2::ErrorCode::Session(EAGAIN))
}

/// Waits until the socket is ready in the direction libssh2 last blocked on.
pub(crate) async fn wait_socket(session: &Session, fd: &AsyncFd<SocketFd>) -> std::io::Result<()> {
    let dirs = session.block_directions();
    if matches!(dirs, BlockDirections::Outbound) {
        fd.writable().await?.clear_ready();
    } else {
        fd.readable().await?.clear_ready();
    }
    Ok(())
}

/// Runs a libssh2 call to completion, waiting on the socket whenever it would block.
pub(crate) async fn retry<T>(
    session: &Session,
    fd: &AsyncFd<SocketFd>,
    mut call: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<T, ssh2::Error> {
    loop {
        match super::gate::measured(&mut call) {
            Err(e) if is_eagain(&e) => {
                wait_socket(session, fd).await.map_err(|io| {
                    // ssh2::Error takes a static message: the kind's, the rest logged.
                    tracing::debug!("waiting on the SSH socket failed: {io}");
                    ssh2::Error::new(
                        ssh2::ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_SOCKET_SEND),
                        socket_error(io.kind()),
                    )
                })?;
            }
            other => return other,
        }
    }
}

/// A static description of a socket error, for `ssh2::Error`.
fn socket_error(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind::*;
    match kind {
        ConnectionReset => "the connection was reset",
        ConnectionAborted => "the connection was aborted",
        BrokenPipe => "the connection was closed",
        TimedOut => "the socket timed out",
        _ => "the socket failed",
    }
}

/// Whether a libssh2 error ends the whole connection rather than one channel.
pub(crate) fn is_fatal(err: &ssh2::Error) -> bool {
    // Socket send/recv failures, disconnects, timeouts, protocol and key exchange errors.
    matches!(
        err.code(),
        ssh2::ErrorCode::Session(
            libssh2_sys::LIBSSH2_ERROR_SOCKET_SEND
                | libssh2_sys::LIBSSH2_ERROR_TIMEOUT
                | libssh2_sys::LIBSSH2_ERROR_SOCKET_DISCONNECT
                | libssh2_sys::LIBSSH2_ERROR_PROTO
                | libssh2_sys::LIBSSH2_ERROR_SOCKET_RECV
                | libssh2_sys::LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE
                | libssh2_sys::LIBSSH2_ERROR_KEX_FAILURE
                | libssh2_sys::LIBSSH2_ERROR_BAD_SOCKET
        )
    )
}
