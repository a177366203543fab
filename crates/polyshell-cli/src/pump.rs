//! The terminal's writer: every byte polyshell prints goes out on one thread of its own,
//! through a queue bounded in bytes, so that a reader that stops reading (`polyshell ... |
//! less`, paused) never blocks the runtime. Policy when the reader is slow: the run waits
//! for it (output is never dropped while the operator may still read it), until Ctrl-C: from
//! then on, standard output still queued or yet to come is dropped and standard error is
//! written directly, so the run can stop and its summary shows.

use polyshell_auth::ConsoleStream;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

static PUMP: OnceLock<&'static Pump> = OnceLock::new();

/// Bytes queued before a writer waits for the reader.
const LIMIT: usize = 8 * 1024 * 1024;

pub struct Pump {
    state: Mutex<State>,
    /// Signalled when an item is queued, or when the queue has room or is empty again.
    changed: Condvar,
    interrupted: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(ConsoleStream, Vec<u8>)>,
    bytes: usize,
    /// The pump thread is inside a write.
    writing: bool,
    /// After Ctrl-C with the queue full: standard output is dropped.
    abandoned: bool,
}

impl Pump {
    /// The process's pump (one thread, started on first use).
    pub fn get() -> &'static Pump {
        PUMP.get_or_init(|| {
            let interrupted = Arc::new(AtomicBool::new(false));
            // Next to tokio's own handler: this one only sets a flag, and works while the
            // runtime's thread waits here.
            let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone());
            let pump: &'static Pump = Box::leak(Box::new(Pump {
                state: Mutex::default(),
                changed: Condvar::new(),
                interrupted,
            }));
            let started = std::thread::Builder::new()
                .name("polyshell-output".into())
                .spawn(move || pump.run());
            if started.is_err() {
                // No thread: write directly (the old behaviour) rather than queue forever.
                pump.lock().abandoned = true;
            }
            pump
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `bytes` for `stream`; waits while the queue is full, unless interrupted.
    pub fn write(&self, stream: ConsoleStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut state = self.lock();
        loop {
            if state.abandoned {
                drop(state);
                if stream == ConsoleStream::Stderr {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(bytes);
                    let _ = err.flush();
                }
                return;
            }
            if state.queue.is_empty() || state.bytes + bytes.len() <= LIMIT {
                state.bytes += bytes.len();
                state.queue.push_back((stream, bytes.to_vec()));
                self.changed.notify_all();
                return;
            }
            state = self.wait(state);
        }
    }

    /// Before the process exits: what was queued is written (if the pump ever started).
    pub fn drain_at_exit() {
        if let Some(pump) = PUMP.get() {
            pump.drain();
        }
    }

    /// Waits until everything queued is written (the end of a run), unless interrupted.
    pub fn drain(&self) {
        let mut state = self.lock();
        while !state.abandoned && (!state.queue.is_empty() || state.writing) {
            state = self.wait(state);
        }
    }

    /// As [`drain`](Pump::drain), giving up after `limit` (a reader that stalls must not
    /// keep a prompt off the screen for ever).
    pub fn drain_within(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut state = self.lock();
        while !state.abandoned
            && (!state.queue.is_empty() || state.writing)
            && std::time::Instant::now() < deadline
        {
            state = self.wait(state);
        }
    }

    /// Waits a moment for the pump; after Ctrl-C, gives up on standard output.
    fn wait<'a>(&'a self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let (mut state, _) = self
            .changed
            .wait_timeout(state, Duration::from_millis(50))
            .unwrap_or_else(|p| p.into_inner());
        if self.interrupted.load(Ordering::Relaxed) && !state.abandoned {
            state.abandoned = true;
            let queued = std::mem::take(&mut state.queue);
            state.bytes = 0;
            let mut err = std::io::stderr().lock();
            for (stream, bytes) in queued {
                if stream == ConsoleStream::Stderr {
                    let _ = err.write_all(&bytes);
                }
            }
            let _ = err.flush();
        }
        state
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            let Some((stream, bytes)) = state.queue.pop_front() else {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            state.writing = true;
            drop(state);
            match stream {
                ConsoleStream::Stdout => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                ConsoleStream::Stderr => {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&bytes);
                    let _ = err.flush();
                }
            }
            state = self.lock();
            state.writing = false;
            state.bytes = state.bytes.saturating_sub(bytes.len());
            self.changed.notify_all();
        }
    }
}
