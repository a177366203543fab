//! Batches: chained schedules sharing one `shared` space, one batch id, and one shell (one
//! connection) per site; and the engine that runs a schedule.
//!
//! A schedule becomes *units*: one job invocation on one site, with the job's actions that
//! match the site. Units run in *lanes*: one lane per site (`site-sequential`,
//! `sequential`), one lane for everything (`atomic`), or a lane per unit (`parallel`); a lane
//! runs its units in job order. `sequential` adds the phase gate (job `k` starts after every
//! unit of the jobs before it). Then each unit takes the fanout permit and the schedule's and
//! job's locks in the global order, runs its actions concurrently, and records outcomes.

use crate::action_task::run_action;
use crate::context::{ActionContext, Shared};
use crate::event::{Event, EventSink, NoEvents};
use crate::job::{Job, Jobs};
use crate::lock::{acquire_all_observed, Guard, LockContext, PhaseGate};
use crate::result::{ActionOutcome, ScheduleResult, SkipReason, Status};
use crate::schedule::{Mode, Schedule};
use dashmap::DashMap;
use polyshell_shell::{Line, OutputSink, Shell};
use polyshell_sites::{ConfigError, Site, SiteStore};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Makes the shell of a site. The batch asks once per site and reuses the shell (and so its
/// connection) for every action of every schedule in the batch.
pub trait ShellFactory: Send + Sync {
    /// The shell for `site`; an error when the site's configuration does not make one.
    fn shell(&self, site: &Site) -> Result<Shell, ConfigError>;
}

/// Every site runs locally, with its `sh` (default `sh`).
pub struct LocalShells;

impl ShellFactory for LocalShells {
    fn shell(&self, site: &Site) -> Result<Shell, ConfigError> {
        let program = site.sh()?.unwrap_or("sh");
        Ok(Shell::local_with(program).named(site.name()))
    }
}

/// A schedule that cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule names a job the batch does not have.
    #[error("schedule `{schedule}` names unknown job `{job}` (known: {known})")]
    UnknownJob {
        /// The schedule's name.
        schedule: String,
        /// The job.
        job: String,
        /// The jobs there are.
        known: String,
    },
}

/// A run of chained schedules. See the module docs.
pub struct Batch {
    id: String,
    sites: SiteStore,
    jobs: Arc<Jobs>,
    schedules: AtomicUsize,
    engine: Arc<Engine>,
}

/// A short random batch id: 6 characters of `[0-9a-z]`.
pub fn new_batch_id() -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..6)
        .map(|_| DIGITS[rand::random_range(0..DIGITS.len())] as char)
        .collect()
}

impl Batch {
    /// A batch running `jobs` on `sites`, each site's shell made by `shells` (once per site).
    pub fn new(sites: SiteStore, jobs: Jobs, shells: Arc<dyn ShellFactory>) -> Batch {
        let id = new_batch_id();
        Batch {
            id: id.clone(),
            sites,
            jobs: Arc::new(jobs),
            schedules: AtomicUsize::new(0),
            engine: Arc::new(Engine {
                batch: id,
                shells,
                shell_cache: DashMap::new(),
                shared: Shared::default(),
                events: Arc::new(NoEvents),
                stop: CancellationToken::new(),
                cancel: CancellationToken::new(),
            }),
        }
    }

    /// Sends the batch's events to `events`.
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> Batch {
        match Arc::get_mut(&mut self.engine) {
            Some(engine) => engine.events = events,
            None => unreachable!("the engine is shared only while a schedule runs"),
        }
        self
    }

    /// The batch's id (`BATCH`; its schedule runs are `BATCH-N`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The batch's shared space: what steps `set`, for the jobs and schedules after them.
    pub fn shared(&self) -> &Shared {
        &self.engine.shared
    }

    /// The sites the batch runs on.
    pub fn sites(&self) -> &SiteStore {
        &self.sites
    }

    /// Starts no new work; what runs finishes (first Ctrl-C). What never started is
    /// reported as skipped.
    pub fn stop(&self) {
        self.engine.stop.cancel();
    }

    /// Stops starting work and cancels what runs: its commands are terminated (second Ctrl-C).
    pub fn cancel(&self) {
        self.engine.stop.cancel();
        self.engine.cancel.cancel();
    }

    /// Whether `cancel` was called.
    pub fn cancelled(&self) -> bool {
        self.engine.cancel.is_cancelled()
    }

    /// Whether `stop` (or `cancel`) was called.
    pub fn stopping(&self) -> bool {
        self.engine.stop.is_cancelled()
    }

    /// The batch's shell for `site` (made once, then reused).
    pub fn shell(&self, site: &Site) -> Result<Shell, ConfigError> {
        self.engine.shell(site)
    }

    /// Runs one schedule of the batch; its id is `BATCH-N`, N counting from 1.
    pub async fn run(&self, schedule: &Schedule) -> Result<ScheduleResult, ScheduleError> {
        let n = self.schedules.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}-{n}", self.id);
        let units = self.units(schedule)?;
        let site_count = units.iter().map(|u| &u.site).collect::<HashSet<_>>().len();
        self.engine.events.event(Event::ScheduleStarted {
            schedule: id.clone(),
            name: schedule.name.clone(),
            mode: schedule.mode.as_str().to_owned(),
            jobs: schedule.jobs.clone(),
            sites: site_count,
        });
        let run = Arc::new(Run {
            id: id.clone(),
            schedule: schedule.clone(),
            start: Instant::now(),
            action_seq: AtomicUsize::new(0),
            failed_sites: Mutex::new(HashSet::new()),
            broken_at: AtomicUsize::new(usize::MAX),
            fanout: schedule
                .fanout
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            outcomes: Mutex::new(Vec::new()),
            phases: (schedule.mode == Mode::Sequential).then(|| {
                let mut sizes = vec![0; schedule.jobs.len()];
                for u in &units {
                    sizes[u.invocation] += 1;
                }
                PhaseGate::new(sizes)
            }),
        });
        let lanes = lanes(schedule.mode, units);
        let span = tracing::info_span!("schedule", id = %id, name = %schedule.name, mode = schedule.mode.as_str());
        let mut tasks = tokio::task::JoinSet::new();
        let ctx = self.engine.clone();
        for lane in lanes {
            let run = run.clone();
            let ctx = ctx.clone();
            tasks.spawn(
                async move {
                    for unit in lane {
                        ctx.run_unit(&run, unit).await;
                    }
                }
                .instrument(span.clone()),
            );
        }
        while tasks.join_next().await.is_some() {}
        let mut outcomes =
            std::mem::take(&mut *run.outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        outcomes.sort_by(|a, b| {
            (a.invocation, &a.site, a.action).cmp(&(b.invocation, &b.site, b.action))
        });
        let result = ScheduleResult {
            id: id.clone(),
            name: schedule.name.clone(),
            outcomes,
            elapsed: run.start.elapsed(),
        };
        self.engine.events.event(Event::ScheduleFinished {
            schedule: id,
            result: result.clone(),
        });
        Ok(result)
    }

    fn units(&self, schedule: &Schedule) -> Result<Vec<Unit>, ScheduleError> {
        let mut units = Vec::new();
        let mut site_cache: HashMap<String, (Arc<Site>, Arc<Vec<String>>)> = HashMap::new();
        for (invocation, name) in schedule.jobs.iter().enumerate() {
            let Some(job) = self.jobs.get(name) else {
                if schedule.allow_missing_job {
                    continue;
                }
                return Err(ScheduleError::UnknownJob {
                    schedule: schedule.name.clone(),
                    job: name.clone(),
                    known: self.jobs.names().join(", "),
                });
            };
            let per_action: Vec<HashSet<String>> = job
                .actions
                .iter()
                .map(|a| {
                    self.sites
                        .list(&a.roles, &schedule.roles)
                        .into_iter()
                        .collect()
                })
                .collect();
            let all_roles: Vec<&String> = job.actions.iter().flat_map(|a| &a.roles).collect();
            for site in self.sites.list(&all_roles[..], &schedule.roles) {
                let actions: Vec<usize> = (0..job.actions.len())
                    .filter(|&i| per_action[i].contains(&site))
                    .collect();
                if actions.is_empty() {
                    continue;
                }
                let (site_arc, roles) = match site_cache.get(&site) {
                    Some(cached) => cached.clone(),
                    None => {
                        let Some(found) = self.sites.get(&site) else {
                            continue;
                        };
                        let entry = (Arc::new(found), Arc::new(self.sites.roles_of(&site)));
                        site_cache.insert(site.clone(), entry.clone());
                        entry
                    }
                };
                units.push(Unit {
                    invocation,
                    job: job.clone(),
                    site,
                    site_info: site_arc,
                    roles,
                    actions,
                });
            }
        }
        Ok(units)
    }
}

/// Groups units into lanes, each run in order by one task.
fn lanes(mode: Mode, units: Vec<Unit>) -> Vec<Vec<Unit>> {
    match mode {
        Mode::Parallel => units.into_iter().map(|u| vec![u]).collect(),
        Mode::Atomic => vec![units],
        Mode::SiteSequential | Mode::Sequential => {
            let mut order: Vec<String> = Vec::new();
            let mut by_site: HashMap<String, Vec<Unit>> = HashMap::new();
            for u in units {
                if !by_site.contains_key(&u.site) {
                    order.push(u.site.clone());
                }
                by_site.entry(u.site.clone()).or_default().push(u);
            }
            order
                .into_iter()
                .filter_map(|s| by_site.remove(&s))
                .collect()
        }
    }
}

/// One job invocation on one site.
struct Unit {
    invocation: usize,
    job: Arc<Job>,
    site: String,
    site_info: Arc<Site>,
    roles: Arc<Vec<String>>,
    actions: Vec<usize>,
}

/// The state of one schedule run, shared by its lanes.
struct Run {
    id: String,
    schedule: Schedule,
    start: Instant,
    action_seq: AtomicUsize,
    failed_sites: Mutex<HashSet<String>>,
    /// The earliest job invocation with a failure (`usize::MAX`: none yet).
    broken_at: AtomicUsize,
    fanout: Option<Arc<tokio::sync::Semaphore>>,
    outcomes: Mutex<Vec<ActionOutcome>>,
    phases: Option<Arc<PhaseGate>>,
}

/// What the lanes need of the batch (owned, so lanes can be spawned).
struct Engine {
    batch: String,
    shells: Arc<dyn ShellFactory>,
    shell_cache: DashMap<String, Shell>,
    shared: Shared,
    events: Arc<dyn EventSink>,
    stop: CancellationToken,
    cancel: CancellationToken,
}

/// Turns a shell's output lines into events of one action.
struct ActionOutput {
    action: String,
    site: String,
    events: Arc<dyn EventSink>,
}

impl OutputSink for ActionOutput {
    fn line(&self, _issuer: &str, line: Line<'_>) {
        self.events.event(Event::Output {
            action: self.action.clone(),
            site: self.site.clone(),
            stream: line.stream,
            line: line.bytes.to_vec(),
            newline: line.newline,
        });
    }
}

/// Drops reports and output when the schedule says so.
struct Filtered {
    inner: Arc<dyn EventSink>,
    report: bool,
    debug: bool,
    quiet: bool,
}

impl EventSink for Filtered {
    fn event(&self, event: Event) {
        let pass = match &event {
            Event::Output { .. } => !self.quiet,
            Event::Report { .. } => self.report && !self.quiet,
            Event::Debug { .. } => self.debug,
            _ => true,
        };
        if pass {
            self.inner.event(event);
        }
    }
}

impl Engine {
    fn shell(&self, site: &Site) -> Result<Shell, ConfigError> {
        if let Some(shell) = self.shell_cache.get(site.name()) {
            return Ok(shell.clone());
        }
        let shell = self.shells.shell(site)?;
        Ok(self
            .shell_cache
            .entry(site.name().to_owned())
            .or_insert(shell)
            .clone())
    }

    fn skip_reason(&self, run: &Run, unit: &Unit) -> Option<SkipReason> {
        if self.stop.is_cancelled() {
            return Some(SkipReason::Stopped);
        }
        let schedule = &run.schedule;
        let failed = run.failed_sites.lock().unwrap_or_else(|p| p.into_inner());
        if schedule.break_on_error {
            let broken_at = run.broken_at.load(Ordering::Acquire);
            let broken = match schedule.mode {
                Mode::SiteSequential => failed.contains(&unit.site),
                // No further job starts; the failed job's other sites finish it.
                Mode::Sequential => broken_at < unit.invocation,
                // A strict rolling order: nothing starts after a failure.
                Mode::Atomic => broken_at != usize::MAX,
                Mode::Parallel => false,
            };
            if broken {
                return Some(SkipReason::BreakOnError);
            }
        }
        match schedule.max_failures {
            Some(max) if failed.len() >= max => Some(SkipReason::MaxFailures),
            _ => None,
        }
    }

    fn record(
        &self,
        run: &Run,
        unit: &Unit,
        action: usize,
        id: Option<String>,
        status: Status,
        started: Duration,
    ) {
        let finished = if id.is_some() {
            run.start.elapsed()
        } else {
            started
        };
        run.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ActionOutcome {
                id,
                job: unit.job.name.clone(),
                invocation: unit.invocation,
                site: unit.site.clone(),
                action,
                status,
                started,
                finished,
            });
    }

    /// Records every action of `unit` as skipped.
    fn skip(&self, run: &Run, unit: &Unit, reason: SkipReason) {
        let at = run.start.elapsed();
        for &a in &unit.actions {
            self.record(run, unit, a, None, Status::Skipped(reason.clone()), at);
        }
    }

    /// Admission of a unit, as one step: the fanout permit, then every lock it needs — the
    /// schedule's, the job's and its actions' own — in the global order (barriers first, so
    /// nothing is held while waiting for others to arrive). The caller races this with stop.
    async fn admit(
        &self,
        run: &Run,
        unit: &Unit,
        lock_ctx: &LockContext,
    ) -> (Option<tokio::sync::OwnedSemaphorePermit>, Vec<Guard>) {
        // A site is busy while it holds a fanout permit.
        let permit = match &run.fanout {
            Some(sem) => sem.clone().acquire_owned().await.ok(),
            None => None,
        };
        let mut locks: Vec<Arc<dyn crate::lock::Lock>> = run
            .schedule
            .locks
            .iter()
            .chain(&unit.job.locks)
            .chain(
                unit.actions
                    .iter()
                    .flat_map(|&a| &unit.job.actions[a].locks),
            )
            .cloned()
            .collect();
        let guards = if locks.is_empty() {
            Vec::new()
        } else {
            let observe = |lock: &dyn crate::lock::Lock, waited: Option<Duration>| {
                let (schedule, job, site, lock) = (
                    run.id.clone(),
                    unit.job.name.clone(),
                    unit.site.clone(),
                    lock.name(),
                );
                self.events.event(match waited {
                    None => Event::LockWaiting {
                        schedule,
                        job,
                        site,
                        lock,
                    },
                    Some(waited) => Event::LockAcquired {
                        schedule,
                        job,
                        site,
                        lock,
                        waited,
                    },
                });
            };
            acquire_all_observed(&mut locks, lock_ctx, observe).await
        };
        (permit, guards)
    }

    async fn run_unit(&self, run: &Run, unit: Unit) {
        // Every wait races stop (and so cancel): no gate, permit or lock that never opens
        // can hold a run past Ctrl-C.
        let _phase = match &run.phases {
            Some(gate) => tokio::select! {
                biased;
                _ = self.stop.cancelled() => return self.skip(run, &unit, SkipReason::Stopped),
                guard = gate.enter(unit.invocation) => Some(guard),
            },
            None => None,
        };
        // Skipped units wait for nothing.
        if let Some(reason) = self.skip_reason(run, &unit) {
            return self.skip(run, &unit, reason);
        }
        let lock_ctx = LockContext {
            site: (*unit.site_info).clone(),
            roles: (*unit.roles).clone(),
            job: unit.job.name.clone(),
            invocation: unit.invocation,
            schedule: run.id.clone(),
            batch: self.batch.clone(),
        };
        let (_permit, _guards) = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return self.skip(run, &unit, SkipReason::Stopped),
            admitted = self.admit(run, &unit, &lock_ctx) => admitted,
        };
        // The waits can be long, and other sites failed meanwhile: every skip rule again.
        if let Some(reason) = self.skip_reason(run, &unit) {
            return self.skip(run, &unit, reason);
        }
        let events: Arc<dyn EventSink> = Arc::new(Filtered {
            inner: self.events.clone(),
            report: run.schedule.report,
            debug: run.schedule.debug,
            quiet: run.schedule.quiet,
        });
        let shell = self.shell(&unit.site_info);
        let fragments = unit.actions.len();
        let mut running = Vec::with_capacity(fragments);
        for (i, &a) in unit.actions.iter().enumerate() {
            let m = run.action_seq.fetch_add(1, Ordering::Relaxed) + 1;
            let id = format!("{}-{m}", run.id);
            let issuer = format!("[{id}] {}", unit.site);
            let started = run.start.elapsed();
            events.event(Event::ActionStarted {
                action: id.clone(),
                schedule: run.id.clone(),
                job: unit.job.name.clone(),
                site: unit.site.clone(),
            });
            if run.schedule.log {
                events.event(Event::Report {
                    action: id.clone(),
                    site: unit.site.clone(),
                    message: format!("starting job: {}", unit.job.name),
                });
            }
            let shell = match &shell {
                Ok(shell) => shell
                    .clone()
                    .with_issuer(&issuer)
                    .with_sink(Arc::new(ActionOutput {
                        action: id.clone(),
                        site: unit.site.clone(),
                        events: events.clone(),
                    })),
                Err(why) => {
                    let status = Status::Failed(format!("no shell: {why}"));
                    self.finish(run, &unit, a, id, status, started, &events);
                    continue;
                }
            };
            let ctx = ActionContext {
                site: unit.site_info.clone(),
                shell,
                shared: self.shared.clone(),
                batch: self.batch.clone(),
                id: id.clone(),
                issuer,
                job: unit.job.name.clone(),
                fragment: i + 1,
                fragments,
                events: events.clone(),
                spawned: Arc::default(),
            };
            let action = unit.job.actions[a].clone();
            let span =
                tracing::info_span!("action", id = %id, site = %unit.site, job = %unit.job.name);
            running.push(
                async move {
                    let status = run_action(action, ctx).await;
                    tracing::debug!(?status, "action finished");
                    (a, id, status, started)
                }
                .instrument(span),
            );
        }
        let finished = tokio::select! {
            // Once cancelled, the actions are not polled again.
            biased;
            _ = self.cancel.cancelled() => {
                // Dropping the actions' futures terminates their commands.
                let at = run.start.elapsed();
                for &a in &unit.actions {
                    self.record(run, &unit, a, Some(format!("{}-cancelled", run.id)), Status::Failed("cancelled".into()), at);
                }
                self.fail_site(run, &unit);
                return;
            }
            done = futures::future::join_all(running) => done,
        };
        for (a, id, status, started) in finished {
            self.finish(run, &unit, a, id, status, started, &events);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        run: &Run,
        unit: &Unit,
        a: usize,
        id: String,
        status: Status,
        started: Duration,
        events: &Arc<dyn EventSink>,
    ) {
        if status.is_failed() {
            self.fail_site(run, unit);
        }
        events.event(Event::ActionFinished {
            action: id.clone(),
            job: unit.job.name.clone(),
            site: unit.site.clone(),
            status: status.clone(),
            elapsed: run.start.elapsed().saturating_sub(started),
        });
        self.record(run, unit, a, Some(id), status, started);
    }

    fn fail_site(&self, run: &Run, unit: &Unit) {
        run.failed_sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(unit.site.clone());
        run.broken_at.fetch_min(unit.invocation, Ordering::AcqRel);
    }
}
