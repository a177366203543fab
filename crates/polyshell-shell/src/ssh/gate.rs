//! How many connections may be in their handshake at once, bounded by what is scarce.
//!
//! A handshake is a little CPU (key exchange, signatures) and several round trips of
//! waiting. Where the machine's CPU is the limit (a fleet on loopback, or this machine busy),
//! more handshakes at once only make each slower and hold more memory: the gate keeps its
//! base, `cores × 16` and at least [`BASE`] (128).
//! Where handshakes mostly wait on the network (the machine idle meanwhile), the gate grows,
//! up to what the file descriptor limit allows: while handshakes queue, it doubles each
//! 100 ms the machine spent a quarter idle (averaged; the first 100 ms, the program's own
//! start, decide nothing), no further than 4x its base before a handshake has finished
//! (too many handshakes sharing a busy CPU would each outlast the connect timeout); and as
//! handshakes finish, by Little's law — enough in flight to keep the cores busy:
//! `cores × wall ÷ cpu` of a handshake. It never shrinks within a run: a run's sites sit on
//! one kind of network.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Handshakes at once from the start, on any machine. Their libssh2 sessions are ~80 KiB
/// each (10 MB at 128); on a machine whose CPU is the limit (a fleet on loopback) each of
/// them takes 128 × its CPU ÷ cores (2 s here), far from a connect timeout; on a network
/// with latency, a run of up to 128 sites starts every handshake at once (at 100 ms, a
/// 100-site 4-job batch took 2.51 s with 32, 2.21 s with 128).
const BASE: usize = 128;
/// The most handshakes ever in flight at once.
const CAP: usize = 1024;
/// The machine counts as idle enough to grow when this share of its CPU time is idle.
const IDLE_TO_GROW: f64 = 0.4;
/// How often the machine's idleness is looked at while handshakes queue, and the idle share
/// (averaged over those looks) that lets the gate double. Lower than [`IDLE_TO_GROW`]: a
/// machine that runs its sshd too (the fleet) idles less even when the network is the limit.
const WATCH_EVERY: Duration = Duration::from_millis(100);
const WATCH_IDLE_TO_GROW: f64 = 0.25;

tokio::task_local! {
    /// CPU time this task spent inside libssh2 calls of the current handshake.
    static CPU_SPENT: Cell<Duration>;
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and reads nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs one synchronous libssh2 call, adding its CPU time to the handshake's (if any).
pub(crate) fn measured<T>(call: impl FnOnce() -> T) -> T {
    let before = thread_cpu();
    let out = call();
    let spent = thread_cpu().saturating_sub(before);
    let _ = CPU_SPENT.try_with(|c| c.set(c.get() + spent));
    out
}

/// The share of the machine's CPU time that was idle since the last sample (`/proc/stat`).
struct IdleMeter {
    last: Option<(u64, u64)>,
    idle_share: f64,
    sampled: Option<Instant>,
}

impl IdleMeter {
    fn read() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
        Some((idle, fields.iter().sum()))
    }

    /// The idle share, sampled at most every 100 ms.
    fn idle_share(&mut self) -> f64 {
        if self
            .sampled
            .is_some_and(|at| at.elapsed() < Duration::from_millis(100))
        {
            return self.idle_share;
        }
        self.sampled = Some(Instant::now());
        let Some(now) = Self::read() else {
            return 0.0; // unknown: never grow
        };
        if let Some((idle, total)) = self.last {
            let (d_idle, d_total) = (now.0.saturating_sub(idle), now.1.saturating_sub(total));
            if d_total > 0 {
                self.idle_share = d_idle as f64 / d_total as f64;
            }
        }
        self.last = Some(now);
        self.idle_share
    }
}

struct Stats {
    /// Moving averages of a handshake's wall and CPU time, in seconds.
    wall: f64,
    cpu: f64,
    samples: u32,
    idle: IdleMeter,
}

pub(crate) struct HandshakeGate {
    slots: Semaphore,
    granted: AtomicUsize,
    /// Handshakes waiting for a slot, and whether a task watches the machine for them.
    queued: AtomicUsize,
    watching: AtomicBool,
    base: usize,
    cores: usize,
    cap: usize,
    stats: Mutex<Stats>,
}

impl HandshakeGate {
    fn new() -> HandshakeGate {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let base = (cores * 16).max(BASE);
        HandshakeGate {
            slots: Semaphore::new(base),
            granted: AtomicUsize::new(base),
            queued: AtomicUsize::new(0),
            watching: AtomicBool::new(false),
            base,
            cores,
            cap: CAP.min(fd_budget()).max(base),
            stats: Mutex::new(Stats {
                wall: 0.0,
                cpu: 0.0,
                samples: 0,
                idle: IdleMeter {
                    last: IdleMeter::read(),
                    idle_share: 0.0,
                    sampled: Some(Instant::now()),
                },
            }),
        }
    }

    /// Runs the handshake `make` makes, holding a slot, measuring it. Made once the slot is
    /// had, and on the heap: a site waiting for a slot holds a small future, not the
    /// handshake's (8 KiB, 16 MB of a 2,000-site run's peak when every site held one).
    pub(crate) async fn run<T, F: std::future::Future<Output = T>>(
        &'static self,
        make: impl FnOnce() -> F,
    ) -> T {
        let _slot: Option<SemaphorePermit> = match self.slots.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                self.watch();
                let slot = self.slots.acquire().await.ok();
                self.queued.fetch_sub(1, Ordering::AcqRel);
                slot
            }
        };
        let started = Instant::now();
        let handshake = Box::pin(make());
        let (out, cpu) = CPU_SPENT
            .scope(Cell::new(Duration::ZERO), async {
                let out = handshake.await;
                (out, CPU_SPENT.with(Cell::get))
            })
            .await;
        self.observe(started.elapsed(), cpu);
        out
    }

    /// While handshakes queue, one task looks at the machine every [`WATCH_EVERY`] and
    /// doubles the gate when it was a quarter idle (averaged over the looks).
    fn watch(&'static self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(async move {
            // Averaged over a few ticks: handshakes use the CPU in bursts a round trip apart.
            let mut last = IdleMeter::read();
            let mut idle = 0.0;
            let mut ticks = 0u32;
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if self.queued.load(Ordering::Acquire) == 0 {
                    self.watching.store(false, Ordering::Release);
                    return;
                }
                ticks += 1;
                let now = IdleMeter::read();
                if let (Some((idle_then, total_then)), Some((idle_now, total_now))) = (last, now) {
                    let total = total_now.saturating_sub(total_then).max(1);
                    let share = idle_now.saturating_sub(idle_then) as f64 / total as f64;
                    idle = (idle + share) / 2.0;
                }
                last = now;
                // The first look spans the program's own start (one core busy reading its
                // configuration, the sshd side not yet at work): it decides nothing.
                if ticks < 2 || idle < WATCH_IDLE_TO_GROW {
                    continue;
                }
                // Until a handshake has finished, at most 4x the base: every handshake in
                // flight shares the CPU, and too many at once on a busy machine would each
                // outlast the connect timeout. Once some have, Little's law takes over.
                let finished = {
                    let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                    stats.samples > 0
                };
                let granted = self.granted.load(Ordering::Relaxed);
                let target = if finished {
                    granted * 2
                } else {
                    (granted * 2).min(self.base * 4)
                };
                self.grow_to(target, "the machine idles while handshakes queue");
            }
        });
    }

    fn grow_to(&self, target: usize, why: &'static str) {
        let target = target.min(self.cap);
        let granted = self.granted.fetch_max(target, Ordering::AcqRel);
        if target > granted {
            self.slots.add_permits(target - granted);
            tracing::debug!(handshakes = target, why, "more handshakes at once");
        }
    }

    fn observe(&self, wall: Duration, cpu: Duration) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let (wall, cpu) = (wall.as_secs_f64(), cpu.as_secs_f64().max(1e-5));
        let weight = if stats.samples < 8 { 0.5 } else { 0.1 };
        stats.wall += (wall - stats.wall) * weight;
        stats.cpu += (cpu - stats.cpu) * weight;
        stats.samples += 1;
        if stats.samples < 4 || stats.idle.idle_share() < IDLE_TO_GROW {
            return;
        }
        let target = ((self.cores as f64) * stats.wall / stats.cpu).ceil() as usize;
        drop(stats);
        self.grow_to(target, "handshakes wait on the network");
    }
}

/// Handshakes the file descriptor limit leaves room for (a site may hold two descriptors,
/// and the rest of the process needs some).
fn fd_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    (limit.rlim_cur as usize / 4).saturating_sub(16)
}

/// The process's gate.
pub(crate) fn handshakes() -> &'static HandshakeGate {
    static GATE: OnceLock<HandshakeGate> = OnceLock::new();
    GATE.get_or_init(HandshakeGate::new)
}
