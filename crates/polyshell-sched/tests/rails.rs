//! The safety rails together, as operators combine them: every mode × fanout × locks
//! (schedule, job and action level) × max_failures × break_on_error × stop or cancel, with
//! work spawned by the actions. Time is tokio's paused clock; every start and end gets a
//! logical tick, so "before" and "after" are exact.
//!
//! Invariants:
//! - never more actions running at once than the fanout, nor than a semaphore allows;
//! - once `max_failures` sites have failed, no action starts (so at most `max_failures` +
//!   the ones in flight fail);
//! - nothing starts after stop or cancel; nothing runs after cancel (spawned work included);
//! - the run always ends.

use polyshell_sched::{
    action, Batch, Jobs, LocalShells, Lock, Mode, NamedMutex, Schedule, Semaphore, Status,
};
use polyshell_sites::{json, SiteStore};
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
enum LockAt {
    None,
    Schedule(usize),
    Job,
    Action(usize),
}

#[derive(Debug, Clone, Copy)]
enum Interrupt {
    None,
    Stop(u64),
    Cancel(u64),
}

#[derive(Debug, Clone)]
struct Case {
    sites: usize,
    jobs: usize,
    mode: Mode,
    fanout: Option<usize>,
    lock: LockAt,
    max_failures: Option<usize>,
    break_on_error: bool,
    /// Per (job, site): duration in ms and whether it fails.
    work: Vec<(u64, bool)>,
    interrupt: Interrupt,
}

fn case() -> impl Strategy<Value = Case> {
    (1..8usize, 1..4usize).prop_flat_map(|(sites, jobs)| {
        (
            prop_oneof![
                Just(Mode::SiteSequential),
                Just(Mode::Sequential),
                Just(Mode::Atomic),
                Just(Mode::Parallel)
            ],
            prop::option::of(1..4usize),
            prop_oneof![
                Just(LockAt::None),
                (1..3usize).prop_map(LockAt::Schedule),
                Just(LockAt::Job),
                (1..3usize).prop_map(LockAt::Action),
            ],
            prop::option::of(1..4usize),
            any::<bool>(),
            // Work takes an even number of ms, interrupts come at odd ones: no two events
            // share an instant of the paused clock.
            prop::collection::vec(
                ((1..6u64).prop_map(|n| 2 * n), prop::bool::weighted(0.4)),
                jobs * sites,
            ),
            prop_oneof![
                3 => Just(Interrupt::None),
                1 => (0..15u64).prop_map(|n| Interrupt::Stop(2 * n + 1)),
                1 => (0..15u64).prop_map(|n| Interrupt::Cancel(2 * n + 1)),
            ],
        )
            .prop_map(
                move |(mode, fanout, lock, max_failures, break_on_error, work, interrupt)| Case {
                    sites,
                    jobs,
                    mode,
                    fanout,
                    lock,
                    max_failures,
                    break_on_error,
                    work,
                    interrupt,
                },
            )
    })
}

#[derive(Debug, Clone)]
struct Record {
    start: u64,
    end: Option<u64>,
}

#[derive(Default)]
struct Recorder {
    tick: AtomicU64,
    records: Mutex<Vec<Record>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
    /// Ticks at which spawned work finished.
    spawned_ends: Mutex<Vec<u64>>,
    /// Ticks at which the engine announced a failed action, and on which site.
    failures: Mutex<Vec<(u64, String)>>,
}

impl polyshell_sched::EventSink for Recorder {
    fn event(&self, event: polyshell_sched::Event) {
        if let polyshell_sched::Event::ActionFinished { site, status, .. } = event {
            if status.is_failed() {
                let at = self.tick();
                self.failures.lock().unwrap().push((at, site));
            }
        }
    }
}

impl Recorder {
    fn tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::SeqCst)
    }
}

/// Runs `case`; returns the records, the tick of the interrupt (if any), and whether the
/// run ended.
fn run(case: &Case) -> (Vec<Record>, Option<u64>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let sites = SiteStore::new();
    for i in 0..case.sites {
        sites.add(format!("s{i}"), ["r"], json!({}));
    }
    let mut jobs = Jobs::new();
    let names: Vec<String> = (0..case.jobs).map(|j| format!("j{j}")).collect();
    let job_lock: Arc<dyn Lock> = NamedMutex::new("job");
    // One semaphore shared by every job's action.
    let action_lock: Arc<dyn Lock> = Semaphore::new(match case.lock {
        LockAt::Action(n) => n,
        _ => 1,
    });
    for (j, name) in names.iter().enumerate() {
        let recorder = recorder.clone();
        let work = case.work.clone();
        let n_sites = case.sites;
        let a = action(move |ctx| {
            let recorder = recorder.clone();
            let site: usize = ctx.site.name()[1..].parse().unwrap();
            let (millis, fail) = work[j * n_sites + site];
            async move {
                let index = {
                    let mut records = recorder.records.lock().unwrap();
                    records.push(Record {
                        start: recorder.tick(),
                        end: None,
                    });
                    records.len() - 1
                };
                let now = recorder.running.fetch_add(1, Ordering::SeqCst) + 1;
                recorder.most_running.fetch_max(now, Ordering::SeqCst);
                // Work the action spawns and waits for: it must not outlive a cancel.
                let spawned = recorder.clone();
                ctx.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(2 * millis)).await;
                    let at = spawned.tick();
                    spawned.spawned_ends.lock().unwrap().push(at);
                    Ok(())
                });
                // Counted down even when the action is dropped (cancel).
                struct Leave(Arc<Recorder>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.running.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _leave = Leave(recorder.clone());
                tokio::time::sleep(Duration::from_millis(millis)).await;
                recorder.records.lock().unwrap()[index].end = Some(recorder.tick());
                if fail {
                    Err(ctx.fail("planned failure"))
                } else {
                    Ok(())
                }
            }
        });
        jobs.add(name, ["r"], a);
        match case.lock {
            LockAt::Action(_) => {
                jobs.lock_action(name, action_lock.clone());
            }
            LockAt::Job => {
                jobs.lock(name, job_lock.clone());
            }
            _ => {}
        }
    }
    let mut schedule = Schedule::new(names).mode(case.mode);
    schedule.fanout = case.fanout;
    schedule.max_failures = case.max_failures;
    schedule.break_on_error = case.break_on_error;
    if let LockAt::Schedule(n) = case.lock {
        schedule.locks.push(Semaphore::new(n));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells)).with_events(recorder.clone());
    let interrupted = rt.block_on(async {
        let running = batch.run(&schedule);
        tokio::pin!(running);
        let mut interrupted = None;
        let at = match case.interrupt {
            Interrupt::None => None,
            Interrupt::Stop(ms) | Interrupt::Cancel(ms) => Some(ms),
        };
        let mut ended = false;
        if let Some(ms) = at {
            tokio::select! {
                _ = &mut running => ended = true,
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {
                    interrupted = Some(recorder.tick());
                    match case.interrupt {
                        Interrupt::Cancel(_) => batch.cancel(),
                        _ => batch.stop(),
                    }
                }
            }
        }
        if !ended {
            let ended = tokio::time::timeout(Duration::from_secs(3600), running).await;
            assert!(ended.is_ok(), "the run never ended: {case:?}");
        }
        // Time for anything left running to show itself.
        tokio::time::sleep(Duration::from_secs(1)).await;
        interrupted
    });
    let records = recorder.records.lock().unwrap().clone();
    (records, interrupted, recorder)
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let (records, interrupted, recorder) = run(case);
    let most = recorder.most_running.load(Ordering::SeqCst);
    if let Some(fanout) = case.fanout {
        prop_assert!(
            most <= fanout,
            "{most} running at once with fanout {fanout}"
        );
    }
    match case.lock {
        LockAt::Schedule(n) | LockAt::Action(n) => {
            prop_assert!(most <= n, "{most} running at once under a semaphore of {n}")
        }
        LockAt::Job => prop_assert!(most <= 1, "{most} running at once under a mutex"),
        LockAt::None => {}
    }
    if let Some(max) = case.max_failures {
        // The tick at which the engine knew of the max-th failed site: nothing may start
        // after it.
        let ends = recorder.failures.lock().unwrap().clone();
        let mut failed_sites = Vec::new();
        let mut reached = None;
        for (end, site) in ends {
            if !failed_sites.contains(&site) {
                failed_sites.push(site);
            }
            if failed_sites.len() >= max {
                reached = Some(end);
                break;
            }
        }
        if let Some(at) = reached {
            let late: Vec<&Record> = records.iter().filter(|r| r.start > at).collect();
            prop_assert!(
                late.is_empty(),
                "max_failures {max} reached at tick {at}, yet {} actions started later: {late:?}",
                late.len()
            );
        }
    }
    if let Some(at) = interrupted {
        let late: Vec<&Record> = records.iter().filter(|r| r.start > at).collect();
        prop_assert!(late.is_empty(), "started after the interrupt: {late:?}");
        if let Interrupt::Cancel(_) = case.interrupt {
            let ended_late: Vec<&Record> = records
                .iter()
                .filter(|r| r.end.is_some_and(|e| e > at))
                .collect();
            prop_assert!(ended_late.is_empty(), "ran on after cancel: {ended_late:?}");
            let spawned_late = recorder
                .spawned_ends
                .lock()
                .unwrap()
                .iter()
                .filter(|&&e| e > at)
                .count();
            prop_assert_eq!(spawned_late, 0, "spawned work ran on after cancel");
            prop_assert_eq!(recorder.running.load(Ordering::SeqCst), 0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_rails_hold_in_combination(case in case()) {
        check(&case)?;
    }
}

// ---- the cases that broke, by name ------------------------------------------------------

/// Runs `schedule` on a paused clock; a run that does not end within an hour of it deadlocked.
fn run_to_end(
    sites: SiteStore,
    jobs: Jobs,
    schedule: &Schedule,
) -> polyshell_sched::ScheduleResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3600), batch.run(schedule))
            .await
            .expect("deadlocked")
            .unwrap()
    })
}

fn all_fail(sites: usize, jobs: usize) -> Vec<(u64, bool)> {
    vec![(5, true); sites * jobs]
}

#[test]
fn max_failures_with_fanout_stops_a_rolling_deploy() {
    let case = Case {
        sites: 6,
        jobs: 1,
        mode: Mode::SiteSequential,
        fanout: Some(2),
        lock: LockAt::None,
        max_failures: Some(1),
        break_on_error: false,
        work: all_fail(6, 1),
        interrupt: Interrupt::None,
    };
    let (records, _, _) = run(&case);
    // Two were in flight when the first failed; the other four never start.
    assert_eq!(records.len(), 2, "{records:?}");
}

/// A lock that is never released: acquiring it waits forever.
struct Stuck;

#[async_trait::async_trait]
impl Lock for Stuck {
    async fn acquire(&self, _: &polyshell_sched::LockContext) -> polyshell_sched::Guard {
        std::future::pending().await
    }
    fn order(&self) -> u64 {
        0
    }
}

#[test]
fn stop_ends_a_run_waiting_on_a_lock_that_never_releases() {
    let sites = SiteStore::new();
    sites.add(["a", "b"], ["r"], json!({}));
    let mut jobs = Jobs::new();
    jobs.add("j", ["r"], action(|_| async { Ok(()) }));
    let mut schedule = Schedule::new(["j"]);
    schedule.locks.push(Arc::new(Stuck));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
    let result = rt.block_on(async {
        let running = batch.run(&schedule);
        tokio::pin!(running);
        tokio::select! {
            _ = &mut running => panic!("ran through a lock that never releases"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => batch.stop(),
        }
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the run did not end after stop")
            .unwrap()
    });
    assert!(result
        .outcomes
        .iter()
        .all(|o| matches!(o.status, Status::Skipped(_))));
}

#[test]
fn cancel_aborts_the_work_an_action_spawned() {
    let case = Case {
        sites: 3,
        jobs: 1,
        mode: Mode::Parallel,
        fanout: None,
        lock: LockAt::None,
        max_failures: None,
        break_on_error: false,
        work: vec![(50, false); 3],
        interrupt: Interrupt::Cancel(75),
    };
    // The actions end at 50 ms and wait for their spawned work (100 ms): cancelled at 75.
    let (_, interrupted, recorder) = run(&case);
    let at = interrupted.expect("interrupted");
    let late = recorder
        .spawned_ends
        .lock()
        .unwrap()
        .iter()
        .filter(|&&e| e > at)
        .count();
    assert_eq!(late, 0, "spawned work finished after the cancel");
}

/// A mutex that takes a moment to grant (as a lock asking another service would), so that
/// other units run between two acquisitions.
struct Slow(Arc<dyn Lock>);

#[async_trait::async_trait]
impl Lock for Slow {
    async fn acquire(&self, ctx: &polyshell_sched::LockContext) -> polyshell_sched::Guard {
        let guard = self.0.acquire(ctx).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        guard
    }
    fn order(&self) -> u64 {
        self.0.order()
    }
}

#[test]
fn action_locks_are_taken_in_the_global_order_with_the_job_s() {
    // Job A holds L2 and its action wants L1; job B holds L1 and its action wants L2. Taken
    // in two steps (job's, then action's), the two units deadlock.
    let (l1, l2): (Arc<dyn Lock>, Arc<dyn Lock>) = (
        Arc::new(Slow(NamedMutex::new("l1"))),
        Arc::new(Slow(NamedMutex::new("l2"))),
    );
    let sites = SiteStore::new();
    sites.add("s", ["r"], json!({}));
    let mut jobs = Jobs::new();
    let slow = || {
        action(|_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        })
    };
    jobs.add("a", ["r"], slow()).lock_action("a", l1.clone());
    jobs.add("b", ["r"], slow()).lock_action("b", l2.clone());
    jobs.lock("a", l2).lock("b", l1);
    let schedule = Schedule::new(["a", "b"]).mode(Mode::Parallel);
    let result = run_to_end(sites, jobs, &schedule);
    assert!(result.outcomes.iter().all(|o| o.status == Status::Ok));
}

#[test]
fn a_barrier_after_a_semaphore_does_not_deadlock() {
    let semaphore = Semaphore::new(1); // made first: earlier in the global order
    let barrier = polyshell_sched::Barrier::new(2);
    let sites = SiteStore::new();
    sites.add(["a", "b"], ["r"], json!({}));
    let mut jobs = Jobs::new();
    jobs.add("j", ["r"], action(|_| async { Ok(()) }));
    let mut schedule = Schedule::new(["j"]).mode(Mode::Parallel);
    schedule.locks.push(semaphore);
    schedule.locks.push(barrier);
    let result = run_to_end(sites, jobs, &schedule);
    assert!(result.outcomes.iter().all(|o| o.status == Status::Ok));
}
