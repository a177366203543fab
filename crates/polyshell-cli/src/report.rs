//! Reporters: what the operator sees. `stream` (site-prefixed lines as they come), `gather`
//! (each distinct output once, with the folded set of sites), `json` (one event per line),
//! `quiet`; a progress line on a terminal; the summary every run ends with.

use crate::pump::Pump;
use polyshell_auth::{Console, ConsoleStream};
use polyshell_sched::{Event, EventSink, ScheduleResult, Status};
use polyshell_shell::Stream;
use polyshell_sites::range;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputMode {
    Stream,
    Gather,
    Json,
    Quiet,
}

/// The terminal's two streams with the progress line kept at the bottom of stderr: every
/// write clears it first and draws it again after, so it never tears a line. Without a
/// progress line (output to a pipe or file) writes are buffered and flushed at least every
/// [`flush`](Terminal::flush) call (the ticker's, every 200 ms) and at the end.
pub struct Terminal {
    state: Mutex<TerminalState>,
    progress: bool,
}

#[derive(Default)]
struct TerminalState {
    status: Option<String>,
    out: Vec<u8>,
    err: Vec<u8>,
}

/// Buffered output goes out once it reaches this size.
const BUFFER: usize = 64 * 1024;

impl Terminal {
    pub fn new(progress: bool) -> Arc<Terminal> {
        Arc::new(Terminal {
            state: Mutex::new(TerminalState::default()),
            progress,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TerminalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self, stream: ConsoleStream, bytes: &[u8]) {
        let mut state = self.lock();
        if !self.progress {
            let buffer = match stream {
                ConsoleStream::Stdout => &mut state.out,
                ConsoleStream::Stderr => &mut state.err,
            };
            buffer.extend_from_slice(bytes);
            if buffer.len() >= BUFFER {
                Self::drain(&mut state);
            }
            return;
        }
        // Under the lock, so the three pieces reach the pump in order.
        let pump = Pump::get();
        if state.status.is_some() {
            pump.write(ConsoleStream::Stderr, b"\r\x1b[2K");
        }
        pump.write(stream, bytes);
        if let Some(line) = state.status.as_ref() {
            pump.write(ConsoleStream::Stderr, line.as_bytes());
        }
    }

    fn drain(state: &mut TerminalState) {
        let pump = Pump::get();
        pump.write(ConsoleStream::Stdout, &std::mem::take(&mut state.out));
        pump.write(ConsoleStream::Stderr, &std::mem::take(&mut state.err));
    }

    /// Hands whatever is buffered to the terminal's writer.
    pub fn flush(&self) {
        Self::drain(&mut self.lock());
    }

    /// The end of a run: everything buffered written out (waiting for a slow reader, but
    /// not past Ctrl-C).
    pub fn finish(&self) {
        self.flush();
        Pump::get().drain();
    }

    /// Draws (or with `None`, removes) the progress line.
    pub fn set_status(&self, line: Option<String>) {
        if !self.progress {
            return;
        }
        let mut state = self.lock();
        let mut bytes = b"\r\x1b[2K".to_vec();
        if let Some(l) = &line {
            bytes.extend_from_slice(l.as_bytes());
        }
        Pump::get().write(ConsoleStream::Stderr, &bytes);
        state.status = line;
    }
}

/// Consumes the batch's events and prints them.
pub struct Reporter {
    mode: OutputMode,
    console: Console,
    color: bool,
    width: usize,
    started: Instant,
    running: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicUsize,
    /// Action runs the plan holds (the progress line's total).
    total: usize,
    /// Running action ids and their sites (what a first Ctrl-C lists).
    active: Mutex<HashMap<String, String>>,
    /// gather: each site's output, in order.
    gathered: Mutex<BTreeMap<String, Vec<u8>>>,
    /// The longest wait for a lock: (lock, site, how long).
    longest_wait: Mutex<Option<LockWait>>,
}

/// A site held back by a lock: which lock, which site, how long.
#[derive(Debug, Clone, PartialEq)]
pub struct LockWait {
    pub lock: String,
    pub site: String,
    pub waited: Duration,
}

impl Reporter {
    pub fn new(
        mode: OutputMode,
        console: Console,
        color: bool,
        sites: &[String],
        total: usize,
    ) -> Arc<Reporter> {
        Arc::new(Reporter {
            total,
            mode,
            console,
            color,
            width: sites
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .min(40),
            started: Instant::now(),
            running: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            active: Mutex::default(),
            gathered: Mutex::default(),
            longest_wait: Mutex::default(),
        })
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn json(&self, value: serde_json::Value) {
        let mut line = value.to_string();
        line.push('\n');
        self.console.write(ConsoleStream::Stdout, line.as_bytes());
    }

    /// The progress line's text.
    pub fn status(&self) -> String {
        let failed = self.failed.load(Ordering::Relaxed);
        let finished = self.done.load(Ordering::Relaxed) + failed;
        let elapsed = self.started.elapsed().as_secs_f64();
        let clock = if elapsed < 60.0 {
            format!("{elapsed:.1}s")
        } else {
            let whole = elapsed as u64;
            format!("{}m{:02}s", whole / 60, whole % 60)
        };
        format!(
            "[polyshell] {finished}/{} done, {failed} failed, {} running, {clock}",
            self.total,
            self.running.load(Ordering::Relaxed),
        )
    }

    /// The lock that held a site back the longest in the run, if any did.
    pub fn longest_lock_wait(&self) -> Option<LockWait> {
        self.longest_wait
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sites with an action running now.
    pub fn running_sites(&self) -> Vec<String> {
        let mut sites: Vec<String> = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        sites.sort();
        sites.dedup();
        sites
    }

    fn prefix(&self, site: &str, mark: &str) -> String {
        let padded = format!("{site:<width$}", width = self.width);
        let mark = if mark == "!" {
            self.paint("31", mark)
        } else {
            mark.to_owned()
        };
        format!("{} {mark} ", self.paint("36", &padded))
    }

    /// gather: prints each distinct output once under the folded set of its sites.
    pub fn print_gathered(&self) {
        if self.mode != OutputMode::Gather {
            return;
        }
        let gathered =
            std::mem::take(&mut *self.gathered.lock().unwrap_or_else(|p| p.into_inner()));
        let mut groups: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
        for (site, output) in gathered {
            match groups.iter_mut().find(|(o, _)| *o == output) {
                Some((_, sites)) => sites.push(site),
                None => groups.push((output, vec![site])),
            }
        }
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.1.cmp(&b.1)));
        for (output, sites) in groups {
            let header = format!("----- {} ({})\n", range::fold(&sites), sites.len());
            self.console
                .write(ConsoleStream::Stdout, self.paint("36", &header).as_bytes());
            self.console.write(ConsoleStream::Stdout, &output);
        }
    }
}

impl EventSink for Reporter {
    fn event(&self, event: Event) {
        match &event {
            Event::ActionStarted { action, site, .. } => {
                self.running.fetch_add(1, Ordering::Relaxed);
                self.active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(action.clone(), site.clone());
            }
            Event::ActionFinished { action, status, .. } => {
                self.running.fetch_sub(1, Ordering::Relaxed);
                self.active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(action);
                if status.is_failed() {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::LockAcquired {
                lock, site, waited, ..
            } => {
                let mut longest = self.longest_wait.lock().unwrap_or_else(|p| p.into_inner());
                if longest.as_ref().is_none_or(|l| *waited > l.waited) {
                    *longest = Some(LockWait {
                        lock: lock.clone(),
                        site: site.clone(),
                        waited: *waited,
                    });
                }
            }
            _ => {}
        }
        match self.mode {
            OutputMode::Quiet => {}
            OutputMode::Json => self.json(event.to_json()),
            OutputMode::Stream => match &event {
                Event::Output {
                    site, stream, line, ..
                } => {
                    let (mark, target) = match stream {
                        Stream::Stdout => ("|", ConsoleStream::Stdout),
                        Stream::Stderr => ("!", ConsoleStream::Stderr),
                    };
                    let mut bytes = self.prefix(site, mark).into_bytes();
                    bytes.extend_from_slice(line);
                    bytes.push(b'\n');
                    self.console.write(target, &bytes);
                }
                Event::Report {
                    action,
                    site,
                    message,
                }
                | Event::Debug {
                    action,
                    site,
                    message,
                } => {
                    // The original's log view: `[BATCH-N-M] site : starting job: deploy`.
                    let text = format!(
                        "{} {site} : {message}\n",
                        self.paint("2", &format!("[{action}]"))
                    );
                    self.console.write(ConsoleStream::Stdout, text.as_bytes());
                }
                _ => {}
            },
            OutputMode::Gather => {
                if let Event::Output {
                    site,
                    stream,
                    line,
                    newline,
                    ..
                } = &event
                {
                    let mut gathered = self.gathered.lock().unwrap_or_else(|p| p.into_inner());
                    let buf = gathered.entry(site.clone()).or_default();
                    if *stream == Stream::Stderr {
                        buf.extend_from_slice(b"! ");
                    }
                    buf.extend_from_slice(line);
                    if *newline || !line.is_empty() {
                        buf.push(b'\n');
                    }
                }
            }
        }
    }
}

/// Per site, over all schedules of a run: failed (with the first reason) beats skipped beats ok.
pub struct Summary {
    pub ok: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
    pub elapsed: Duration,
    /// The lock that held a site back the longest.
    pub longest_lock_wait: Option<LockWait>,
}

impl Summary {
    pub fn of(results: &[ScheduleResult], sites: &[String], elapsed: Duration) -> Summary {
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut skipped: Vec<(String, String)> = Vec::new();
        for r in results {
            for (site, why) in r.failed_sites() {
                if !failed.iter().any(|(s, _)| *s == site) {
                    // A shell's error names its site already; the summary line names it once.
                    let why = why
                        .strip_prefix(&format!("{site}: "))
                        .map(str::to_owned)
                        .unwrap_or(why);
                    failed.push((site, why));
                }
            }
        }
        for r in results {
            for o in &r.outcomes {
                if let Status::Skipped(why) = &o.status {
                    if !failed.iter().any(|(s, _)| *s == o.site)
                        && !skipped.iter().any(|(s, _)| *s == o.site)
                    {
                        skipped.push((o.site.clone(), why.to_string()));
                    }
                }
            }
        }
        let ok = sites
            .iter()
            .filter(|s| {
                !failed.iter().any(|(f, _)| f == *s) && !skipped.iter().any(|(k, _)| k == *s)
            })
            .cloned()
            .collect();
        Summary {
            ok,
            failed,
            skipped,
            elapsed,
            longest_lock_wait: None,
        }
    }

    pub fn success(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }

    pub fn text(&self, color: bool) -> String {
        let paint = |code: &str, t: String| {
            if color {
                format!("\x1b[{code}m{t}\x1b[0m")
            } else {
                t
            }
        };
        let total = self.ok.len() + self.failed.len() + self.skipped.len();
        let mut s = format!(
            "polyshell: {total} site{}: {} ok, {} failed, {} skipped in {:.1}s\n",
            if total == 1 { "" } else { "s" },
            self.ok.len(),
            self.failed.len(),
            self.skipped.len(),
            self.elapsed.as_secs_f64()
        );
        for (site, why) in &self.failed {
            s.push_str(&paint("31", format!("  failed  {site}: {why}")));
            s.push('\n');
        }
        for (site, why) in &self.skipped {
            s.push_str(&format!("  skipped {site}: {why}\n"));
        }
        if let Some(w) = &self.longest_lock_wait {
            s.push_str(&format!(
                "  longest lock wait: `{}` held {} back {:.1}s\n",
                w.lock,
                w.site,
                w.waited.as_secs_f64()
            ));
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "event": "summary",
            "ok": self.ok.len(),
            "failed": self.failed.iter().map(|(s, w)| json!({"site": s, "reason": w})).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(s, w)| json!({"site": s, "reason": w})).collect::<Vec<_>>(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "longest_lock_wait": self.longest_lock_wait.as_ref().map(|w| json!({"lock": w.lock, "site": w.site, "waited_ms": w.waited.as_millis() as u64})),
        })
    }
}
