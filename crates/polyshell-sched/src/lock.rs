//! Lock primitives: what bounds the work. A lock is acquired around each job's actions on a
//! site, with a context naming site, job, schedule and batch; its guard releases on drop
//! (also when an action fails or panics). The schedule modes are made of the same kinds of
//! pieces: ordered lanes (one per site, or one for the whole schedule) and the phase gate
//! below.

use async_trait::async_trait;
use dashmap::DashMap;
use polyshell_sites::Site;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What a lock is acquired for.
#[derive(Debug, Clone)]
pub struct LockContext {
    /// The site, with its configuration (a lock may key on a config value).
    pub site: Site,
    /// The roles the site is in.
    pub roles: Vec<String>,
    /// The job whose action takes the lock.
    pub job: String,
    /// Position of this job in the schedule's list (a job listed twice has two).
    pub invocation: usize,
    /// Schedule id, `BATCH-N`.
    pub schedule: String,
    /// The batch's id.
    pub batch: String,
}

/// A held lock; dropping it releases the lock.
pub struct Guard(#[allow(dead_code)] Box<dyn Any + Send>);

impl Guard {
    /// A guard holding `inner` until dropped (a permit, a mutex guard, ...).
    pub fn new(inner: impl Any + Send) -> Guard {
        Guard(Box::new(inner))
    }

    /// A guard that holds nothing (for locks that only wait).
    pub fn none() -> Guard {
        Guard(Box::new(()))
    }
}

/// A lock primitive. Implement it to bound work in your own way (see also the datacenter
/// example, and `polyshell_cli::locks::register` to name it in a Polyfile).
///
/// ```
/// use async_trait::async_trait;
/// use polyshell_sched::{next_order, Guard, Lock, LockContext, Semaphore};
/// use std::sync::Arc;
///
/// /// Canary sites (config `canary = true`) one at a time; the others unbounded.
/// struct CanaryFirst {
///     canaries: Arc<Semaphore>,
///     order: u64,
/// }
///
/// #[async_trait]
/// impl Lock for CanaryFirst {
///     async fn acquire(&self, ctx: &LockContext) -> Guard {
///         if ctx.site.config().get("canary").and_then(|v| v.as_bool()) == Some(true) {
///             self.canaries.acquire(ctx).await
///         } else {
///             Guard::none()
///         }
///     }
///     fn order(&self) -> u64 {
///         self.order
///     }
///     fn name(&self) -> String {
///         "canary-first".into()
///     }
/// }
///
/// let lock: Arc<dyn Lock> = Arc::new(CanaryFirst { canaries: Semaphore::new(1), order: next_order() });
/// # let _ = lock;
/// ```
#[async_trait]
pub trait Lock: Send + Sync {
    /// Waits until the work described by `ctx` may run; it runs while the guard lives.
    async fn acquire(&self, ctx: &LockContext) -> Guard;

    /// The lock's place in the global order: the locks of one piece of work are taken in
    /// increasing order, so two schedules cannot deadlock each other. Use [`next_order`].
    fn order(&self) -> u64;

    /// A name for logs.
    fn name(&self) -> String {
        "lock".into()
    }

    /// Whether acquiring waits for other work to arrive rather than for work to leave (a
    /// barrier). Such locks are taken first, while the unit holds nothing else.
    fn waits_for_others(&self) -> bool {
        false
    }
}

/// A fresh place in the global lock order; locks made earlier come first.
pub fn next_order() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 32);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Takes `locks` in their global order; the guards release when the returned vector drops.
pub async fn acquire_all(locks: &mut [Arc<dyn Lock>], ctx: &LockContext) -> Vec<Guard> {
    acquire_all_observed(locks, ctx, |_, _| {}).await
}

/// [`acquire_all`], telling `observe` of every lock that was not free at once:
/// `(lock, None)` when the wait starts, `(lock, Some(waited))` when the lock is taken.
pub async fn acquire_all_observed(
    locks: &mut [Arc<dyn Lock>],
    ctx: &LockContext,
    observe: impl Fn(&dyn Lock, Option<std::time::Duration>),
) -> Vec<Guard> {
    // Locks that wait for others to arrive (barriers) first, holding nothing: a barrier
    // waited for while holding a semaphore's permit deadlocks the units that need it. Then
    // the rest in the global order; a lock named twice is taken once.
    locks.sort_by_key(|l| (!l.waits_for_others(), l.order()));
    let mut guards = Vec::with_capacity(locks.len());
    let mut taken = Vec::with_capacity(locks.len());
    for lock in locks.iter() {
        if taken.contains(&lock.order()) {
            continue;
        }
        taken.push(lock.order());
        let mut acquiring = lock.acquire(ctx);
        let guard = match futures::poll!(acquiring.as_mut()) {
            std::task::Poll::Ready(guard) => guard,
            std::task::Poll::Pending => {
                observe(lock.as_ref(), None);
                let since = tokio::time::Instant::now();
                let guard = acquiring.await;
                observe(lock.as_ref(), Some(since.elapsed()));
                guard
            }
        };
        guards.push(guard);
    }
    guards
}

/// One piece of work at a time per site, across every schedule that shares this lock.
pub struct SiteMutex {
    order: u64,
    sites: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl SiteMutex {
    /// A mutex per site: one action at a time on each site.
    pub fn new() -> Arc<SiteMutex> {
        Arc::new(SiteMutex {
            order: next_order(),
            sites: DashMap::new(),
        })
    }
}

#[async_trait]
impl Lock for SiteMutex {
    async fn acquire(&self, ctx: &LockContext) -> Guard {
        // Clone the Arc out: never hold a dashmap guard across an await.
        let mutex = self
            .sites
            .entry(ctx.site.name().to_owned())
            .or_default()
            .clone();
        Guard::new(mutex.lock_owned().await)
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn name(&self) -> String {
        "site mutex".into()
    }
}

/// One piece of work at a time, wherever it runs; share the `Arc` to share the lock.
pub struct NamedMutex {
    name: String,
    order: u64,
    mutex: Arc<tokio::sync::Mutex<()>>,
}

impl NamedMutex {
    /// A mutex called `name` (in events and errors).
    pub fn new(name: &str) -> Arc<NamedMutex> {
        Arc::new(NamedMutex {
            name: name.to_owned(),
            order: next_order(),
            mutex: Arc::default(),
        })
    }
}

#[async_trait]
impl Lock for NamedMutex {
    async fn acquire(&self, _: &LockContext) -> Guard {
        Guard::new(self.mutex.clone().lock_owned().await)
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn name(&self) -> String {
        format!("mutex {}", self.name)
    }
}

/// At most `n` pieces of work at once (a rolling deploy of two servers at a time).
pub struct Semaphore {
    order: u64,
    permits: Arc<tokio::sync::Semaphore>,
    n: usize,
}

impl Semaphore {
    /// A semaphore of `n` permits.
    pub fn new(n: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore {
            order: next_order(),
            permits: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
            n,
        })
    }
}

#[async_trait]
impl Lock for Semaphore {
    async fn acquire(&self, _: &LockContext) -> Guard {
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => Guard::new(permit),
            Err(_) => Guard::none(), // never closed
        }
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn name(&self) -> String {
        format!("semaphore {}", self.n)
    }
}

/// At most `n` sites of each listed role at once; a site in several listed roles takes a
/// permit of each (in the global order, by role name).
pub struct RoleSemaphore {
    order: u64,
    n: usize,
    roles: Vec<String>,
    permits: DashMap<String, Arc<tokio::sync::Semaphore>>,
}

impl RoleSemaphore {
    /// A semaphore of `n` permits for each of `roles`.
    pub fn new(n: usize, roles: &[&str]) -> Arc<RoleSemaphore> {
        let mut roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        roles.sort();
        Arc::new(RoleSemaphore {
            order: next_order(),
            n: n.max(1),
            roles,
            permits: DashMap::new(),
        })
    }
}

#[async_trait]
impl Lock for RoleSemaphore {
    async fn acquire(&self, ctx: &LockContext) -> Guard {
        let mut held = Vec::new();
        for role in self.roles.iter().filter(|r| ctx.roles.contains(r)) {
            let sem = self
                .permits
                .entry(role.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.n)))
                .clone();
            if let Ok(permit) = sem.acquire_owned().await {
                held.push(permit);
            }
        }
        Guard::new(held)
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn name(&self) -> String {
        format!("role semaphore {} per {}", self.n, self.roles.join(","))
    }
}

/// One semaphore of `n` permits per distinct value of a site's configuration key (`dc`):
/// at most `n` sites of one datacenter at a time, datacenters side by side. A site without
/// the key takes no permit when `skip_missing`, else the sites without it share one semaphore.
pub struct KeySemaphore {
    order: u64,
    key: String,
    n: usize,
    skip_missing: bool,
    permits: DashMap<String, Arc<tokio::sync::Semaphore>>,
}

impl KeySemaphore {
    /// A semaphore of `n` permits per value of the sites' `key`; with `skip_missing`, a site without the key takes no permit (else it fails).
    pub fn new(key: &str, n: usize, skip_missing: bool) -> Arc<KeySemaphore> {
        Arc::new(KeySemaphore {
            order: next_order(),
            key: key.to_owned(),
            n: n.max(1),
            skip_missing,
            permits: DashMap::new(),
        })
    }
}

#[async_trait]
impl Lock for KeySemaphore {
    async fn acquire(&self, ctx: &LockContext) -> Guard {
        let value = match ctx.site.config().get(&self.key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None if self.skip_missing => return Guard::none(),
            None => String::new(),
        };
        // Clone the Arc out: never hold a dashmap guard across an await.
        let sem = self
            .permits
            .entry(value)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.n)))
            .clone();
        match sem.acquire_owned().await {
            Ok(permit) => Guard::new(permit),
            Err(_) => Guard::none(), // never closed
        }
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn name(&self) -> String {
        format!("semaphore {} per {}", self.n, self.key)
    }
}

/// `lock` under another name (in events, summaries and `--dry-run`): how the Polyfile's
/// `[locks.NAME]` appear.
pub fn labeled(name: &str, lock: Arc<dyn Lock>) -> Arc<dyn Lock> {
    Arc::new(Labeled {
        name: name.to_owned(),
        inner: lock,
    })
}

struct Labeled {
    name: String,
    inner: Arc<dyn Lock>,
}

#[async_trait]
impl Lock for Labeled {
    async fn acquire(&self, ctx: &LockContext) -> Guard {
        self.inner.acquire(ctx).await
    }
    fn order(&self) -> u64 {
        self.inner.order()
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn waits_for_others(&self) -> bool {
        self.inner.waits_for_others()
    }
}

/// Nobody passes until `n` have arrived (then all go at once).
/// Releases its waiters `n` at a time: the first `n` units that take it start together,
/// then the next `n`. Taken before any other lock of a unit (see
/// [`Lock::waits_for_others`]), so it never waits holding a semaphore's permit. Give it
/// as many units as `n` divides: a unit left short of a full group waits until the run is
/// stopped (every admission wait races stop and cancel, so Ctrl-C still ends it).
pub struct Barrier {
    order: u64,
    barrier: tokio::sync::Barrier,
}

impl Barrier {
    /// A barrier for `n` sites: none goes on until `n` have arrived.
    pub fn new(n: usize) -> Arc<Barrier> {
        Arc::new(Barrier {
            order: next_order(),
            barrier: tokio::sync::Barrier::new(n.max(1)),
        })
    }
}

#[async_trait]
impl Lock for Barrier {
    async fn acquire(&self, _: &LockContext) -> Guard {
        self.barrier.wait().await;
        Guard::none()
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn name(&self) -> String {
        "barrier".into()
    }

    fn waits_for_others(&self) -> bool {
        true
    }
}

/// Phases in order: work of phase `k` starts only once every piece of work of the earlier
/// phases has finished. It makes `sequential`.
pub(crate) struct PhaseGate {
    state: Mutex<(usize, Vec<usize>)>,
    changed: Notify,
}

impl PhaseGate {
    /// `sizes[k]`: how many pieces of work phase `k` has.
    pub(crate) fn new(sizes: Vec<usize>) -> Arc<PhaseGate> {
        let mut first = 0;
        while first < sizes.len() && sizes[first] == 0 {
            first += 1;
        }
        Arc::new(PhaseGate {
            state: Mutex::new((first, sizes)),
            changed: Notify::new(),
        })
    }

    pub(crate) async fn enter(self: &Arc<Self>, phase: usize) -> PhaseGuard {
        loop {
            let notified = self.changed.notified();
            if self.state.lock().unwrap_or_else(|p| p.into_inner()).0 >= phase {
                return PhaseGuard {
                    gate: self.clone(),
                    phase,
                };
            }
            notified.await;
        }
    }
}

pub(crate) struct PhaseGuard {
    gate: Arc<PhaseGate>,
    phase: usize,
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        let (current, sizes) = &mut *state;
        sizes[self.phase] -= 1;
        while *current < sizes.len() && sizes[*current] == 0 {
            *current += 1;
        }
        drop(state);
        self.gate.changed.notify_waiters();
    }
}
