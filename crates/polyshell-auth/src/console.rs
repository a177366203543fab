//! The console guard: while a password prompt is on the terminal, live output is held back
//! and released after it, so nothing garbles the prompt. What is held is bounded
//! ([`Console::with_hold_limit`], 8 MiB by default): past it the oldest held output is let
//! go, and a line says how much when the prompt ends (a prompt left waiting for an hour while
//! a thousand sites print cannot exhaust memory).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How much output a console holds during a prompt unless told otherwise.
pub const DEFAULT_HOLD_LIMIT: usize = 8 << 20;

/// Which output stream a piece of console output belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

type Writer = dyn Fn(ConsoleStream, &[u8]) + Send + Sync;

/// Output to the terminal passes through here. Clones share the same console.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Box<Writer>,
    /// Waits until what `writer` was given has reached the terminal (a writer that queues).
    drain: Option<Box<dyn Fn() + Send + Sync>>,
    limit: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    prompts: usize,
    held: VecDeque<(ConsoleStream, Vec<u8>)>,
    /// Bytes in `held`, and bytes let go since the prompt began.
    held_bytes: usize,
    dropped: usize,
}

impl Console {
    /// A console writing through `writer` (the CLI passes one that writes stdout/stderr).
    pub fn new(writer: impl Fn(ConsoleStream, &[u8]) + Send + Sync + 'static) -> Console {
        Console::with_hold_limit(DEFAULT_HOLD_LIMIT, writer)
    }

    /// A console that holds at most `limit` bytes during a prompt (the newest).
    pub fn with_hold_limit(
        limit: usize,
        writer: impl Fn(ConsoleStream, &[u8]) + Send + Sync + 'static,
    ) -> Console {
        Console {
            inner: Arc::new(Inner {
                writer: Box::new(writer),
                drain: None,
                limit,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `bytes` now, or holds them while a prompt is up.
    pub fn write(&self, stream: ConsoleStream, bytes: &[u8]) {
        let mut state = self.lock();
        if state.prompts > 0 {
            state.held_bytes += bytes.len();
            state.held.push_back((stream, bytes.to_vec()));
            while state.held_bytes > self.inner.limit {
                let Some((_, oldest)) = state.held.pop_front() else {
                    break;
                };
                state.held_bytes -= oldest.len();
                state.dropped += oldest.len();
            }
        } else {
            // Written under the lock: a prompt cannot start half-way through a line.
            (self.inner.writer)(stream, bytes);
        }
    }

    /// Whether output is being held back right now.
    pub fn holding(&self) -> bool {
        self.lock().prompts > 0
    }

    /// Runs `draw` (e.g. the progress line) unless a prompt is up, under the console's lock:
    /// a prompt cannot begin half-way through it, and nothing drawn this way can erase a
    /// prompt on the screen. `false` if a prompt was up and `draw` did not run.
    pub fn unless_holding(&self, draw: impl FnOnce()) -> bool {
        let state = self.lock();
        if state.prompts > 0 {
            return false;
        }
        draw();
        true
    }

    /// The same console, `drain` waiting until everything its writer was given is on the
    /// terminal: for a writer that queues (the CLI's goes through a thread that never
    /// blocks the run), so that a prompt is written after what came before it, and nothing
    /// queued before the prompt lands on top of it. Call before cloning the console.
    pub fn with_drain(mut self, drain: impl Fn() + Send + Sync + 'static) -> Console {
        // A console already shared keeps its writer as it is (documented: call it first).
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.drain = Some(Box::new(drain));
        }
        self
    }

    /// Waits until what was written has reached the terminal (see [`with_drain`](Self::with_drain)).
    pub fn drain(&self) {
        if let Some(drain) = &self.inner.drain {
            drain();
        }
    }

    /// Holds output until the returned guard is dropped.
    pub fn begin_prompt(&self) -> PromptHold {
        self.lock().prompts += 1;
        PromptHold {
            console: self.clone(),
        }
    }
}

/// Output is held while this lives; dropping it releases what was held, in order.
pub struct PromptHold {
    console: Console,
}

impl Drop for PromptHold {
    fn drop(&mut self) {
        let mut state = self.console.lock();
        state.prompts -= 1;
        if state.prompts == 0 {
            let dropped = std::mem::take(&mut state.dropped);
            if dropped > 0 {
                let note = format!(
                    "polyshell: {dropped} bytes of output that came while the prompt was up are \
                     not shown (the newest {} are)\n",
                    self.console.inner.limit
                );
                (self.console.inner.writer)(ConsoleStream::Stderr, note.as_bytes());
            }
            state.held_bytes = 0;
            for (stream, bytes) in std::mem::take(&mut state.held) {
                (self.console.inner.writer)(stream, &bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_held_during_a_prompt_and_released_in_order() {
        let written: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = written.clone();
        let console = Console::new(move |_, b| sink.lock().unwrap().extend_from_slice(b));
        console.write(ConsoleStream::Stdout, b"a");
        let hold = console.begin_prompt();
        console.write(ConsoleStream::Stdout, b"b");
        console.write(ConsoleStream::Stderr, b"c");
        assert_eq!(*written.lock().unwrap(), b"a");
        assert!(console.holding());
        drop(hold);
        assert_eq!(*written.lock().unwrap(), b"abc");
    }

    /// A writer that queues (as the CLI's does) delivers late: the prompter drains it after
    /// the hold begins, so the progress line queued before the prompt cannot land after it.
    #[test]
    fn drain_waits_for_a_queuing_writer_before_a_prompt_is_drawn() {
        let screen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let delivered = screen.clone();
        let left = pending.clone();
        std::thread::spawn(move || {
            for bytes in rx {
                std::thread::sleep(std::time::Duration::from_millis(100));
                delivered.lock().unwrap().extend_from_slice(&bytes);
                left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let queued = pending.clone();
        let console = Console::new(move |_, b| {
            queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tx.send(b.to_vec()).unwrap();
        })
        .with_drain(move || {
            while pending.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        console.write(ConsoleStream::Stderr, b"[progress 0.2s]");
        let _hold = console.begin_prompt();
        console.drain();
        // The prompt would be written now: everything before it is already on the screen.
        assert_eq!(*screen.lock().unwrap(), b"[progress 0.2s]");
    }

    #[test]
    fn what_is_held_is_bounded_and_what_was_let_go_is_said() {
        let written: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = written.clone();
        let console =
            Console::with_hold_limit(10, move |_, b| sink.lock().unwrap().extend_from_slice(b));
        let hold = console.begin_prompt();
        for chunk in [b"aaaa", b"bbbb", b"cccc", b"dddd"] {
            console.write(ConsoleStream::Stdout, chunk);
        }
        assert!(console.lock().held_bytes <= 10);
        drop(hold);
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "polyshell: 8 bytes of output that came while the prompt was up are not shown \
             (the newest 10 are)\nccccdddd"
        );
    }
}
