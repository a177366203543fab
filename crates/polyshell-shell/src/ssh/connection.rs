//! The protocol between a connection's users and its driver task: a cloneable handle
//! ([`Connection`]) sending [`Request`]s, and the kinds of channel one can open.

use crate::process::ProcEvent;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

/// What a channel is for.
#[derive(Debug)]
pub(crate) enum OpenKind {
    /// A command; with `pty`, on a pseudo-terminal (stdout and stderr then merge).
    Exec {
        script: String,
        pty: bool,
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
}

impl Connection {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// A handle that does not keep the connection open.
    pub(crate) fn downgrade(&self) -> WeakConnection {
        WeakConnection {
            tx: self.tx.downgrade(),
            wake: self.wake.clone(),
            alive: self.alive.clone(),
            next_id: self.next_id.clone(),
            host: self.host.clone(),
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
}

impl WeakConnection {
    pub(crate) fn upgrade(&self) -> Option<Connection> {
        Some(Connection {
            tx: self.tx.upgrade()?,
            wake: self.wake.clone(),
            alive: self.alive.clone(),
            next_id: self.next_id.clone(),
            host: self.host.clone(),
        })
    }
}
