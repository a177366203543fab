//! Terminations under way when a program is about to exit: a command cancelled by dropping
//! its future is killed by its connection's task (libssh2) or a task of its own (the system
//! ssh), which a program's exit would cut short.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::oneshot;

/// Terminations started by dropping a running command, not yet confirmed by its connection.
fn pending_terminations() -> &'static std::sync::Mutex<Vec<oneshot::Receiver<()>>> {
    static PENDING: OnceLock<std::sync::Mutex<Vec<oneshot::Receiver<()>>>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

/// Records a termination under way (started by dropping a running command), for
/// [`flush_terminations`] to wait for.
pub(crate) fn register(wait: oneshot::Receiver<()>) {
    pending_terminations()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(wait);
}

/// Waits (at most `limit`) until every command cancelled by dropping its future has been
/// terminated on its host. A program about to exit calls this, or the kills still queued
/// for its connections would die with it.
pub async fn flush_terminations(limit: Duration) {
    let pending = std::mem::take(
        &mut *pending_terminations()
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    let _ = tokio::time::timeout(limit, async {
        for wait in pending {
            let _ = wait.await;
        }
    })
    .await;
}
