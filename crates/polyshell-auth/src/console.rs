//! The console guard: while a password prompt is on the terminal, live output is held back
//! and released after it, so nothing garbles the prompt.

use std::sync::{Arc, Mutex};

/// Which output stream a piece of console output belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleStream {
    Stdout,
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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    prompts: usize,
    held: Vec<(ConsoleStream, Vec<u8>)>,
}

impl Console {
    /// A console writing through `writer` (the CLI passes one that writes stdout/stderr).
    pub fn new(writer: impl Fn(ConsoleStream, &[u8]) + Send + Sync + 'static) -> Console {
        Console {
            inner: Arc::new(Inner {
                writer: Box::new(writer),
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
            state.held.push((stream, bytes.to_vec()));
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
}
