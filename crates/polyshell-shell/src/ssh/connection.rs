//! The protocol between a connection's users and its driver task: a cloneable handle
//! ([`Connection`]) sending [`Request`]s, and the kinds of channel one can open.

use crate::process::ProcEvent;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

/// What a channel is for.
#[derive(Debug)]
pub(crate) enum OpenKind {
    /// A command; with `pty`, on a pseudo-terminal (stdout and stderr then merge).
    Exec {
        script: String,
        pty: bool,
        /// A command that lives as long as the connection (the connection keeper's runner):
        /// it is not a reason to open a spare channel, nor to keep one.
        resident: bool,
        /// A runner: with `resident` false, a spare channel opens beside it at once (for
        /// the connection's commands that are not plain).
        runner: bool,
    },
    Forward {
        host: String,
        port: u16,
    },
}

pub(crate) enum Request {
    Open {
        id: u64,
        kind: OpenKind,
        events: mpsc::Sender<ProcEvent>,
        full: Arc<AtomicBool>,
        credit: Arc<Semaphore>,
    },
    Stdin {
        id: u64,
        data: Vec<u8>,
    },
    Eof {
        id: u64,
    },
    /// Terminate the command's process group (by a kill on a new channel), then close.
    Terminate {
        id: u64,
        done: Option<oneshot::Sender<()>>,
    },
}

/// Channel opens asked of a connection and not yet answered, and how long one takes:
/// libssh2 opens one channel at a time per connection, so a new one waits about
/// `pending × round trip` (what decides whether a bastion gets another connection).
#[derive(Default)]
pub(crate) struct OpenQueue {
    pending: AtomicUsize,
    /// The server refused a channel on this connection (its `MaxSessions`).
    refused: AtomicBool,
    /// A moving average of one open's time, in microseconds.
    open_us: AtomicU64,
    /// The channel id of the connection's runner while it idles (0: none, or busy).
    idle_runner: AtomicU64,
}

impl OpenQueue {
    pub(crate) fn asked(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn answered(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub(crate) fn refuse(&self) {
        self.refused.store(true, Ordering::Release);
    }

    /// Whether the server refused a channel on this connection.
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    /// The runner on channel `id` idles: the driver may end it to free its session.
    pub(crate) fn runner_idle(&self, id: u64) {
        self.idle_runner.store(id, Ordering::Release);
    }

    /// The runner on channel `id` has a command (or is gone).
    pub(crate) fn runner_busy(&self, id: u64) {
        let _ = self
            .idle_runner
            .compare_exchange(id, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The idle runner's channel id, which is then no longer counted idle.
    pub(crate) fn take_idle_runner(&self) -> Option<u64> {
        Some(self.idle_runner.swap(0, Ordering::AcqRel)).filter(|&id| id != 0)
    }

    pub(crate) fn took(&self, open: std::time::Duration) {
        let us = open.as_micros().min(u64::MAX as u128) as u64;
        let _ = self
            .open_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |avg| {
                Some(if avg == 0 {
                    us.max(1)
                } else {
                    (avg * 3 + us) / 4
                })
            });
    }

    /// One open's time as measured, if it was.
    pub(crate) fn open_time(&self) -> Option<std::time::Duration> {
        let us = self.open_us.load(Ordering::Acquire);
        (us > 0).then(|| std::time::Duration::from_micros(us))
    }

    /// How long a channel asked for now would wait for its open, an open taking `guess`
    /// until one was timed here.
    pub(crate) fn expected_wait(&self, guess: std::time::Duration) -> std::time::Duration {
        let pending = self.pending.load(Ordering::Acquire) as u32;
        self.open_time().unwrap_or(guess) * pending
    }
}

/// A handle to a connection's driver; clones share it. The driver ends when every handle is
/// gone and no channel is open.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) tx: mpsc::UnboundedSender<Request>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) next_id: Arc<AtomicU64>,
    /// The site's name, for errors.
    pub(crate) host: Arc<str>,
    pub(crate) opens: Arc<OpenQueue>,
}

impl Connection {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// Whether `other` is a handle to this same connection.
    pub(crate) fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.alive, &other.alive)
    }

    /// A handle that does not keep the connection open.
    pub(crate) fn downgrade(&self) -> WeakConnection {
        WeakConnection {
            tx: self.tx.downgrade(),
            wake: self.wake.clone(),
            alive: self.alive.clone(),
            next_id: self.next_id.clone(),
            host: self.host.clone(),
            opens: self.opens.clone(),
        }
    }
}

/// A [`Connection`] that lets its driver end when every strong handle is gone.
pub(crate) struct WeakConnection {
    tx: mpsc::WeakUnboundedSender<Request>,
    wake: Arc<Notify>,
    alive: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
    host: Arc<str>,
    opens: Arc<OpenQueue>,
}

impl WeakConnection {
    pub(crate) fn upgrade(&self) -> Option<Connection> {
        Some(Connection {
            tx: self.tx.upgrade()?,
            wake: self.wake.clone(),
            alive: self.alive.clone(),
            next_id: self.next_id.clone(),
            host: self.host.clone(),
            opens: self.opens.clone(),
        })
    }
}
