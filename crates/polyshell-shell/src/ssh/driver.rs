//! One task per SSH connection drives libssh2 in non-blocking mode: it multiplexes every
//! channel of the connection (commands and forwarded ports), so concurrent commands on one
//! site run concurrently on one connection, and it is the only code that touches the
//! session, so no call ever blocks a thread and no wake-up is lost between channels.

use super::connection::{OpenKind, OpenQueue, Request};
use super::nonblocking::{is_eagain, is_fatal, SocketFd};
use crate::error::ErrorKind;
use crate::output::{signal_number, ExitStatus, Stream};
use crate::process::ProcEvent;
use ssh2::{BlockDirections, Channel, Session};
use std::collections::VecDeque;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

const CHUNK: usize = 32 * 1024;
/// Bytes of stdin a writer may have in flight to one channel.
pub(crate) const STDIN_CREDIT: usize = 1024 * 1024;

pub(crate) struct Driver {
    // Declared (so dropped) before the session, which owns and closes the socket.
    pub(crate) fd: AsyncFd<SocketFd>,
    pub(crate) session: Session,
    pub(crate) host: String,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) rx: mpsc::UnboundedReceiver<Request>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) pid_marker: Arc<str>,
    pub(crate) next_id: Arc<AtomicU64>,
    pub(crate) opens: Arc<OpenQueue>,
}

enum State {
    Opening,
    Starting(Channel),
    Running(Channel),
    Closing(Channel),
    Done,
}

struct Op {
    id: u64,
    kind: OpenKind,
    state: State,
    events: mpsc::Sender<ProcEvent>,
    full: Arc<AtomicBool>,
    credit: Arc<Semaphore>,
    parked: Option<ProcEvent>,
    stdin: VecDeque<Vec<u8>>,
    stdin_eof: bool,
    eof_sent: bool,
    out_eof: [bool; 2],
    /// The remote process group, read from the first line of stderr.
    pid: Option<u32>,
    /// Stderr held back while looking for the pid line.
    head: Option<Vec<u8>>,
    /// Terminations waiting for this op (a kill op) to finish.
    on_done: Vec<oneshot::Sender<()>>,
    /// An op started by the driver itself (a kill): nobody reads its events.
    internal: bool,
    pty_ready: bool,
    /// `exec` was sent (perhaps still unanswered): the command may be running.
    exec_sent: bool,
    /// Cancelled while its channel was opening: closed as soon as the open completes.
    abandoned: bool,
    /// Terminated before its pid line arrived: kill the group as soon as it does, unless
    /// the command ends first or the deadline passes.
    kill_pending: Option<Instant>,
    /// Its channel was the connection's spare (which the server may have closed meanwhile).
    from_spare: bool,
    /// A spare channel found closed when this op took it: to be closed, the op reopened.
    discard: Option<Channel>,
    /// Session opens the server refused so far, and when to ask again.
    refused: u32,
    open_again: Option<Instant>,
    /// Counted in the connection's [`OpenQueue`] until its channel is open (or failed).
    queued: bool,
    /// When libssh2 began its open (the round trip the queue's average learns from).
    open_began: Option<Instant>,
}

/// How long a terminated command's pid line is waited for before the channel is just closed.
const PID_WAIT: Duration = Duration::from_secs(10);

/// A refused session channel is asked for again this many times, this much later each time:
/// OpenSSH counts a closed session against `MaxSessions` until its next cleanup, so with a
/// limit of 1 the next command's open can be refused though the last has ended.
const OPEN_RETRIES: u32 = 3;
const OPEN_RETRY_AFTER: Duration = Duration::from_millis(50);

/// How long a spare channel is kept on a connection that runs nothing.
const SPARE_IDLE: Duration = Duration::from_secs(2);

/// The `opening` slot's holder while the spare channel opens (op ids count up from 0).
const SPARE_ID: u64 = u64::MAX;

/// A session channel opened ahead while one command runs, taken by the next command on the
/// connection: it then starts one round trip sooner (no wait for its channel's open). Only
/// on a connection that has finished a command already (one that runs a single command, as
/// most of a fan-out's do, would never use it, and holding one costs memory on both ends);
/// only while at most one command runs, so a connection holds at most two sessions for its
/// commands' one (OpenSSH's MaxSessions is 10 by default); never on a connection that only
/// forwards (a bastion's).
enum Spare {
    /// No command has finished on this connection yet.
    NotYet,
    None,
    Opening,
    /// Open, and since when the connection has run nothing (if it has not).
    Ready(Channel, Option<Instant>),
    /// The server refused one (a MaxSessions of 1): not tried again on this connection.
    Off,
}

impl Driver {
    pub(crate) async fn run(mut self) {
        let mut ops: Vec<Op> = Vec::new();
        let mut opening: Option<u64> = None;
        let mut spare = Spare::NotYet;
        let mut requests_open = true;
        let mut last_heard = Instant::now();
        let mut next_keepalive = self.keepalive.map(|k| tokio::time::Instant::now() + k);
        let mut spins = 0u32;
        loop {
            while requests_open {
                match self.rx.try_recv() {
                    Ok(req) => self.handle(req, &mut ops),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => requests_open = false,
                }
            }
            let progress = match self.step_all(&mut ops, &mut opening, &mut spare) {
                Ok(p) => p,
                Err(reason) => return self.die(ops, reason),
            };
            if !requests_open && ops.is_empty() {
                let _ = self.session.disconnect(None, "done", None);
                return;
            }
            if progress {
                spins += 1;
                if spins % 64 == 0 {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            let want_write = matches!(
                self.session.block_directions(),
                BlockDirections::Outbound | BlockDirections::Both
            );
            let keepalive_at = next_keepalive;
            let spare_expires = match &spare {
                Spare::Ready(_, Some(idle)) => Some(*idle + SPARE_IDLE),
                _ => None,
            };
            let timer = ops
                .iter()
                .filter_map(|o| o.open_again)
                .chain(spare_expires)
                .min()
                .map(tokio::time::Instant::from);
            tokio::select! {
                ready = self.fd.readable() => match ready {
                    Ok(mut guard) => {
                        last_heard = Instant::now();
                        match self.step_all(&mut ops, &mut opening, &mut spare) {
                            Ok(true) => {}
                            Ok(false) if ops.is_empty() => {
                                // libssh2 reads only for a channel: an idle connection
                                // (a kept one) learns of the server's end from the socket.
                                if let Some(reason) = peer_closed(self.fd.get_ref().0) {
                                    return self.die(ops, reason);
                                }
                                guard.clear_ready();
                            }
                            Ok(false) => guard.clear_ready(),
                            Err(reason) => return self.die(ops, reason),
                        }
                    }
                    Err(err) => return self.die(ops, err.to_string()),
                },
                ready = self.fd.writable(), if want_write => match ready {
                    Ok(mut guard) => match self.step_all(&mut ops, &mut opening, &mut spare) {
                        Ok(true) => {}
                        Ok(false) => guard.clear_ready(),
                        Err(reason) => return self.die(ops, reason),
                    },
                    Err(err) => return self.die(ops, err.to_string()),
                },
                req = self.rx.recv(), if requests_open => match req {
                    Some(req) => self.handle(req, &mut ops),
                    None => requests_open = false,
                },
                _ = self.wake.notified() => {}
                _ = sleep_until(timer), if timer.is_some() => {}
                _ = sleep_until(keepalive_at), if keepalive_at.is_some() => {
                    let interval = self.keepalive.unwrap_or(Duration::from_secs(15));
                    if last_heard.elapsed() > interval * 3 {
                        return self.die(ops, format!("no answer to keepalives for {}s", (interval * 3).as_secs()));
                    }
                    let _ = self.session.keepalive_send();
                    next_keepalive = Some(tokio::time::Instant::now() + interval);
                }
            }
        }
    }

    fn die(self, ops: Vec<Op>, reason: String) {
        tracing::debug!(host = %self.host, %reason, "connection lost");
        self.alive.store(false, Ordering::Release);
        for op in ops {
            op.credit.close();
            let (host, reason) = (self.host.clone(), reason.clone());
            // A command whose `exec` was never sent did not run: safe to start again.
            let lost = if matches!(op.kind, OpenKind::Exec { .. }) && !op.exec_sent {
                ErrorKind::LostBeforeStart { host, reason }
            } else {
                ErrorKind::ConnectionLost { host, reason }
            };
            let _ = op.events.try_send(ProcEvent::Failed(lost));
            for done in op.on_done {
                let _ = done.send(());
            }
        }
        // Nobody may block on a dead session: drop it without a polite disconnect.
    }

    fn handle(&self, req: Request, ops: &mut Vec<Op>) {
        match req {
            Request::Open {
                id,
                kind,
                events,
                full,
                credit,
            } => ops.push(Op::new(id, kind, events, full, credit, false)),
            Request::Stdin { id, data } => {
                if let Some(op) = ops.iter_mut().find(|o| o.id == id && !o.stdin_eof) {
                    op.stdin.push_back(data);
                } else {
                    // The channel is gone; nothing will consume the credit the writer took.
                }
            }
            Request::Eof { id } => {
                if let Some(op) = ops.iter_mut().find(|o| o.id == id) {
                    op.stdin_eof = true;
                }
            }
            Request::Terminate { id, done } => {
                tracing::trace!(host = %self.host, id, "terminating a command");
                self.terminate(id, done, ops)
            }
        }
    }

    fn terminate(&self, id: u64, done: Option<oneshot::Sender<()>>, ops: &mut Vec<Op>) {
        let Some(op) = ops.iter_mut().find(|o| o.id == id) else {
            if let Some(done) = done {
                let _ = done.send(());
            }
            return;
        };
        // Whatever the command still prints, nobody reads it any more.
        op.internal = true;
        op.stdin.clear();
        op.stdin_eof = true;
        op.credit.close();
        op.on_done.extend(done);
        let may_run = op.exec_sent || matches!(op.state, State::Running(_));
        match (op.pid, may_run) {
            (Some(pid), _) => {
                let kill = self.kill_op(pid, std::mem::take(&mut op.on_done));
                op.close();
                ops.push(kill);
            }
            // The command may have started but its pid line is not here yet: keep reading
            // until it is (it is the first thing the command prints), then kill.
            (None, true) => op.kill_pending = Some(Instant::now() + PID_WAIT),
            // Never started: closing the channel is all there is to do.
            // Never started. A channel still opening cannot be dropped half-way: libssh2
            // opens one channel at a time per session and keeps that open's state, so an
            // abandoned open would block every later channel. It is closed once open.
            (None, false) if matches!(op.state, State::Opening) => op.abandoned = true,
            (None, false) => op.close(),
        }
    }

    /// An internal op running the POSIX terminate script for process group `pid`.
    fn kill_op(&self, pid: u32, done: Vec<oneshot::Sender<()>>) -> Op {
        let script = crate::command::login_shell_line(&crate::command::terminate_script(pid));
        let (events, _) = mpsc::channel(1);
        let kill_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut kill = Op::new(
            kill_id,
            OpenKind::Exec {
                script,
                pty: false,
                resident: false,
                runner: false,
            },
            events,
            Arc::default(),
            Arc::new(Semaphore::new(0)),
            true,
        );
        kill.stdin_eof = true;
        kill.on_done = done;
        kill
    }

    /// Advances every channel as far as it goes without blocking. `Err` ends the connection.
    fn channel_error(&self, reason: String) -> ErrorKind {
        ErrorKind::Channel {
            host: self.host.clone(),
            reason,
        }
    }

    /// An internal op that closes `ch` (a spare nobody will use).
    fn closing_op(&self, ch: Channel) -> Op {
        let (events, _) = mpsc::channel(1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut op = Op::new(
            id,
            OpenKind::Exec {
                script: String::new(),
                pty: false,
                resident: false,
                runner: false,
            },
            events,
            Arc::default(),
            Arc::new(Semaphore::new(0)),
            true,
        );
        op.state = State::Closing(ch);
        op
    }

    /// Opens the spare channel, hands it to a command waiting for a channel, or closes it
    /// after [`SPARE_IDLE`] of a connection running nothing.
    fn step_spare(
        &self,
        ops: &mut Vec<Op>,
        opening: &mut Option<u64>,
        spare: &mut Spare,
    ) -> Result<bool, String> {
        let execs = ops
            .iter()
            .filter(|o| {
                matches!(
                    o.kind,
                    OpenKind::Exec {
                        resident: false,
                        ..
                    }
                ) && !matches!(o.state, State::Done)
            })
            .count();
        if matches!(spare, Spare::None)
            && opening.is_none()
            && execs == 1
            && ops.iter().any(|o| {
                o.exec_sent
                    && !o.internal
                    && matches!(
                        o.kind,
                        OpenKind::Exec {
                            resident: false,
                            ..
                        }
                    )
                    && matches!(o.state, State::Starting(_) | State::Running(_))
            })
            && !ops.iter().any(|o| matches!(o.state, State::Opening))
        {
            *spare = Spare::Opening;
            *opening = Some(SPARE_ID);
        }
        // A runner's commands are still to come: a spare beside it at once (the first
        // command's end is what allows one otherwise).
        if matches!(spare, Spare::NotYet)
            && ops.iter().any(|o| {
                matches!(
                    o.kind,
                    OpenKind::Exec {
                        runner: true,
                        resident: false,
                        ..
                    }
                )
            })
        {
            *spare = Spare::None;
        }
        let mut progress = false;
        if matches!(spare, Spare::Opening) {
            match self.session.channel_session() {
                Ok(ch) => {
                    *opening = None;
                    *spare = Spare::Ready(ch, None);
                    progress = true;
                }
                Err(e) if is_eagain(&e) => return Ok(false),
                Err(e) if is_fatal(&e) => return Err(e.to_string()),
                Err(e) => {
                    tracing::debug!(host = %self.host, error = %e, "no spare channel on this connection");
                    self.opens.refuse();
                    *opening = None;
                    *spare = Spare::Off;
                    return Ok(true);
                }
            }
        }
        let Spare::Ready(_, idle) = spare else {
            return Ok(progress);
        };
        let busy = ops
            .iter()
            .any(|o| !o.internal && !matches!(o.kind, OpenKind::Exec { resident: true, .. }));
        let waiting = ops.iter_mut().find(|o| {
            matches!(o.state, State::Opening)
                && matches!(o.kind, OpenKind::Exec { .. })
                && !o.abandoned
                && *opening != Some(o.id)
        });
        let expired = !busy && idle.is_some_and(|at| at.elapsed() >= SPARE_IDLE);
        if waiting.is_none() && !expired {
            *idle = if busy {
                None
            } else {
                idle.or(Some(Instant::now()))
            };
            return Ok(progress);
        }
        let Spare::Ready(ch, _) = std::mem::replace(spare, Spare::None) else {
            return Ok(progress); // matched as Ready above
        };
        match waiting {
            // Closed by the server while it waited (a ChannelTimeout): not for a command.
            Some(op) if !ch.eof() => {
                op.state = State::Starting(ch);
                op.from_spare = true;
            }
            _ => ops.push(self.closing_op(ch)),
        }
        Ok(true)
    }

    fn step_all(
        &self,
        ops: &mut Vec<Op>,
        opening: &mut Option<u64>,
        spare: &mut Spare,
    ) -> Result<bool, String> {
        let mut progress = self.step_spare(ops, opening, spare)?;
        let mut kills = Vec::new();
        for op in ops.iter_mut() {
            progress |= self.step(op, opening)?;
            if let Some(ch) = op.discard.take() {
                kills.push(self.closing_op(ch));
            }
            if let Some(deadline) = op.kill_pending {
                if let Some(pid) = op.pid {
                    op.kill_pending = None;
                    kills.push(self.kill_op(pid, std::mem::take(&mut op.on_done)));
                    op.close();
                } else if matches!(op.state, State::Done | State::Closing(_)) {
                    op.kill_pending = None; // it ended by itself
                } else if Instant::now() > deadline {
                    tracing::debug!(host = %self.host, id = op.id, "no pid line from a terminated command; closing its channel");
                    op.kill_pending = None;
                    op.close();
                }
            }
        }
        // A session refused while the connection's runner idles (a server allowing few
        // sessions): the runner gives its own back (the end of its input: it exits), and
        // the refused open, asked again, finds room. A runner that had just been handed a
        // command runs it first; one found gone sends its command to a channel of its own.
        if ops.iter().any(|o| o.refused > 0 && o.open_again.is_some()) {
            if let Some(id) = self.opens.take_idle_runner() {
                if let Some(runner) = ops.iter_mut().find(|o| o.id == id) {
                    tracing::debug!(host = %self.host, "a session refused: the idle runner gives its own back");
                    runner.stdin_eof = true;
                    progress = true;
                }
            }
        }
        for op in ops.iter_mut() {
            if op.queued && !matches!(op.state, State::Opening) {
                op.queued = false;
                self.opens.answered();
            }
        }
        progress |= !kills.is_empty();
        ops.extend(kills);
        let before = ops.len();
        ops.retain_mut(|op| {
            if matches!(op.state, State::Done) && op.parked.is_none() {
                if !op.internal && matches!(spare, Spare::NotYet) {
                    *spare = Spare::None;
                }
                op.credit.close();
                for done in op.on_done.drain(..) {
                    let _ = done.send(());
                }
                false
            } else {
                true
            }
        });
        Ok(progress || ops.len() != before)
    }

    fn step(&self, op: &mut Op, opening: &mut Option<u64>) -> Result<bool, String> {
        if let Some(event) = op.parked.take() {
            match op.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    op.parked = Some(event);
                    op.full.store(true, Ordering::Release);
                    return Ok(false);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => op.internal = true,
            }
        }
        match std::mem::replace(&mut op.state, State::Done) {
            State::Opening => {
                if op.abandoned && *opening != Some(op.id) {
                    return Ok(true); // its open never began: Done, nothing to close
                }
                if opening.is_some_and(|o| o != op.id) {
                    op.state = State::Opening; // libssh2 opens one channel at a time
                    return Ok(false);
                }
                if op.open_again.is_some_and(|at| Instant::now() < at) {
                    op.state = State::Opening;
                    return Ok(false);
                }
                op.open_again = None;
                let began = *op.open_began.get_or_insert_with(Instant::now);
                let opened = match &op.kind {
                    OpenKind::Exec { .. } => self.session.channel_session(),
                    OpenKind::Forward { host, port } => {
                        self.session.channel_direct_tcpip(host, *port, None)
                    }
                };
                match opened {
                    Ok(ch) if op.abandoned => {
                        *opening = None;
                        op.state = State::Closing(ch);
                        Ok(true)
                    }
                    Ok(ch) => {
                        *opening = None;
                        self.opens.took(began.elapsed());
                        op.state = match op.kind {
                            OpenKind::Exec { .. } => State::Starting(ch),
                            OpenKind::Forward { .. } => State::Running(ch),
                        };
                        Ok(true)
                    }
                    Err(e) if is_eagain(&e) => {
                        *opening = Some(op.id);
                        op.state = State::Opening;
                        Ok(false)
                    }
                    Err(e) => {
                        *opening = None;
                        if is_fatal(&e) {
                            return Err(e.to_string());
                        }
                        let session = matches!(op.kind, OpenKind::Exec { .. });
                        if session {
                            self.opens.refuse();
                        }
                        if session && !op.abandoned && op.refused < OPEN_RETRIES {
                            op.refused += 1;
                            op.open_began = None;
                            op.open_again = Some(Instant::now() + OPEN_RETRY_AFTER * op.refused);
                            op.state = State::Opening;
                            return Ok(true);
                        }
                        self.opens.took(began.elapsed());
                        op.finish(ProcEvent::Failed(self.channel_error(e.to_string())));
                        Ok(true)
                    }
                }
            }
            State::Starting(mut ch) => {
                let OpenKind::Exec { script, pty, .. } = &op.kind else {
                    op.state = State::Running(ch);
                    return Ok(true);
                };
                if *pty && !op.pty_ready {
                    match ch.request_pty("xterm", None, Some((200, 50, 0, 0))) {
                        Ok(()) => op.pty_ready = true,
                        Err(e) if is_eagain(&e) && !(op.from_spare && ch.eof()) => {
                            op.state = State::Starting(ch);
                            return Ok(false);
                        }
                        Err(e) if is_fatal(&e) => return Err(e.to_string()),
                        Err(_) if op.from_spare => {
                            op.from_spare = false;
                            op.discard = Some(ch);
                            op.state = State::Opening;
                            return Ok(true);
                        }
                        Err(e) => {
                            op.state = State::Closing(ch);
                            op.finish(ProcEvent::Failed(
                                self.channel_error(format!("pty refused: {e}")),
                            ));
                            return Ok(true);
                        }
                    }
                }
                op.exec_sent = true;
                match ch.exec(script) {
                    Ok(()) => {
                        op.state = State::Running(ch);
                        Ok(true)
                    }
                    // A spare the server closed before our request reached it: the command
                    // never ran; it gets a channel of its own.
                    Err(e) if op.from_spare && (!is_eagain(&e) || ch.eof()) && !is_fatal(&e) => {
                        tracing::debug!(host = %self.host, "the spare channel was closed; opening another");
                        op.from_spare = false;
                        op.exec_sent = false;
                        op.pty_ready = false;
                        op.discard = Some(ch);
                        op.state = State::Opening;
                        Ok(true)
                    }
                    Err(e) if is_eagain(&e) => {
                        op.state = State::Starting(ch);
                        Ok(false)
                    }
                    Err(e) if is_fatal(&e) => Err(e.to_string()),
                    Err(e) => {
                        op.state = State::Closing(ch);
                        op.finish(ProcEvent::Failed(self.channel_error(e.to_string())));
                        Ok(true)
                    }
                }
            }
            State::Running(mut ch) => {
                let progress = op.pump(&mut ch, &self.pid_marker, &self.session)?;
                let streams = if matches!(op.kind, OpenKind::Exec { .. }) {
                    2
                } else {
                    1
                };
                if op.out_eof[..streams].iter().all(|e| *e) && op.parked.is_none() {
                    op.state = State::Closing(ch);
                    return Ok(true);
                }
                op.state = State::Running(ch);
                Ok(progress)
            }
            State::Closing(mut ch) => {
                let closed = ch.close().and_then(|()| ch.wait_close());
                match closed {
                    Ok(()) => {
                        let status = match ch.exit_signal() {
                            Ok(sig) if sig.exit_signal.is_some() => ExitStatus::Signal(
                                signal_number(sig.exit_signal.as_deref().unwrap_or("")),
                            ),
                            _ => ExitStatus::Code(ch.exit_status().unwrap_or(-1)),
                        };
                        op.finish(ProcEvent::Exit(status));
                        Ok(true)
                    }
                    Err(e) if is_eagain(&e) => {
                        op.state = State::Closing(ch);
                        Ok(false)
                    }
                    Err(e) if is_fatal(&e) => Err(e.to_string()),
                    Err(e) => {
                        op.finish(ProcEvent::Failed(self.channel_error(e.to_string())));
                        Ok(true)
                    }
                }
            }
            State::Done => Ok(false),
        }
    }
}

/// Why the peer of socket `fd` is gone (it closed, reset, or the socket failed), or `None`
/// while it is there. Sees the end even behind unread data, which libssh2 reads later.
fn peer_closed(fd: std::os::fd::RawFd) -> Option<String> {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    if n <= 0 {
        return None;
    }
    if poll.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
        return Some("the connection's socket failed".into());
    }
    (poll.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
        .then(|| "the server closed the connection".into())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Op {
    fn new(
        id: u64,
        kind: OpenKind,
        events: mpsc::Sender<ProcEvent>,
        full: Arc<AtomicBool>,
        credit: Arc<Semaphore>,
        internal: bool,
    ) -> Op {
        let head = matches!(kind, OpenKind::Exec { .. }).then(Vec::new);
        Op {
            id,
            kind,
            state: State::Opening,
            events,
            full,
            credit,
            parked: None,
            stdin: VecDeque::new(),
            stdin_eof: false,
            eof_sent: false,
            out_eof: [false; 2],
            pid: None,
            head,
            on_done: Vec::new(),
            internal,
            pty_ready: false,
            exec_sent: false,
            abandoned: false,
            kill_pending: None,
            from_spare: false,
            discard: None,
            refused: 0,
            open_again: None,
            queued: !internal,
            open_began: None,
        }
    }

    /// Closes the channel (if open) without waiting for the command.
    fn close(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Running(ch) | State::Starting(ch) | State::Closing(ch) => State::Closing(ch),
            State::Opening | State::Done => State::Done,
        };
    }

    /// Sends the last event; the op is done once it is delivered.
    fn finish(&mut self, event: ProcEvent) {
        self.deliver(event);
        if !matches!(self.state, State::Closing(_)) {
            self.state = State::Done;
        }
    }

    /// Queues an event for the reader; false when the reader's queue is full (parked).
    fn deliver(&mut self, event: ProcEvent) -> bool {
        if self.internal {
            return true;
        }
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.parked = Some(event);
                self.full.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.internal = true;
                true
            }
        }
    }

    /// Moves stdin out and output in, a bounded amount per call (fairness between channels).
    fn pump(&mut self, ch: &mut Channel, marker: &str, session: &Session) -> Result<bool, String> {
        let mut progress = false;
        while let Some(front) = self.stdin.front_mut() {
            match ch.write(front) {
                Ok(n) => {
                    self.credit.add_permits(n);
                    progress = true;
                    if n == front.len() {
                        self.stdin.pop_front();
                    } else {
                        front.drain(..n);
                    }
                }
                Err(e) if e.kind() == IoKind::WouldBlock => break,
                Err(_) => {
                    // The remote side stopped reading (e.g. exited): drop the rest.
                    let rest: usize = self.stdin.drain(..).map(|b| b.len()).sum();
                    self.credit.add_permits(rest);
                    self.stdin_eof = true;
                    self.eof_sent = true;
                }
            }
        }
        if self.stdin.is_empty() && self.stdin_eof && !self.eof_sent {
            match ch.send_eof() {
                Ok(()) => {
                    self.eof_sent = true;
                    progress = true;
                }
                Err(e) if is_eagain(&e) => {}
                Err(e) if is_fatal(&e) => return Err(e.to_string()),
                Err(_) => self.eof_sent = true,
            }
        }
        let streams = if matches!(self.kind, OpenKind::Exec { .. }) {
            2
        } else {
            1
        };
        // The pid line arrives on stderr, or on the merged stream of a pty.
        let pid_stream = if matches!(self.kind, OpenKind::Exec { pty: true, .. }) {
            0
        } else {
            1
        };
        let mut buf = [0u8; CHUNK];
        for index in 0..streams {
            for _ in 0..4 {
                if self.out_eof[index] || self.parked.is_some() {
                    break;
                }
                let read = if index == 0 {
                    ch.read(&mut buf)
                } else {
                    ch.stderr().read(&mut buf)
                };
                match read {
                    Ok(0) => {
                        self.out_eof[index] = true;
                        progress = true;
                        if index == pid_stream {
                            self.flush_head(pid_stream);
                        }
                    }
                    Ok(n) => {
                        progress = true;
                        let stream = if index == 0 {
                            Stream::Stdout
                        } else {
                            Stream::Stderr
                        };
                        if index == pid_stream {
                            self.scan_pid(stream, &buf[..n], marker);
                        } else {
                            self.deliver(ProcEvent::Output(stream, buf[..n].to_vec()));
                        }
                    }
                    Err(e) if e.kind() == IoKind::WouldBlock => break,
                    Err(e) => {
                        // Channel-level trouble ends the channel; socket trouble the session.
                        match ssh2::Error::last_session_error(session) {
                            Some(last) if is_fatal(&last) => return Err(last.to_string()),
                            None if e.kind() == IoKind::TimedOut => return Err(e.to_string()),
                            _ => {}
                        }
                        self.out_eof = [true; 2];
                        progress = true;
                        break;
                    }
                }
            }
        }
        Ok(progress)
    }

    /// Passes output on, except the pid line at its head (looked for in the first 4 KiB).
    fn scan_pid(&mut self, stream: Stream, chunk: &[u8], marker: &str) {
        let Some(head) = self.head.as_mut() else {
            self.deliver(ProcEvent::Output(stream, chunk.to_vec()));
            return;
        };
        head.extend_from_slice(chunk);
        if let Some((pid, rest)) = crate::command::take_pid_line(head, marker) {
            self.pid = pid;
            self.head = None;
            if !rest.is_empty() {
                self.deliver(ProcEvent::Output(stream, rest));
            }
        } else if head.len() > 4096 {
            self.flush_head(if stream == Stream::Stdout { 0 } else { 1 });
        }
    }

    fn flush_head(&mut self, index: usize) {
        if let Some(head) = self.head.take() {
            if !head.is_empty() {
                let stream = if index == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                self.deliver(ProcEvent::Output(stream, head));
            }
        }
    }
}
