//! Property tests of the schedule modes: random sites, roles, jobs, durations and failures,
//! run with recording fake actions; the invariants are checked on the recorded intervals
//! (logical ticks, so overlap is exact).

use polyshell_sched::{action, Batch, Jobs, LocalShells, Mode, Schedule, ScheduleResult, Status};
use polyshell_sites::{json, SiteStore};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Plan {
    /// Roles of each site `s0`, `s1`, ...
    site_roles: Vec<Vec<String>>,
    /// Per job, per action: its roles.
    jobs: Vec<Vec<Vec<String>>>,
    /// The schedule: job indices (repeats allowed).
    list: Vec<usize>,
    /// Duration in ms of (job, action, site).
    millis: Vec<u64>,
    /// Which (job, action, site) fail.
    fails: Vec<bool>,
}

fn role_set() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set(0..3usize, 1..3)
        .prop_map(|s| s.into_iter().map(|r| format!("r{r}")).collect())
}

fn plan(fail: bool) -> impl Strategy<Value = Plan> {
    (1..6usize, 1..4usize).prop_flat_map(move |(sites, jobs)| {
        (
            prop::collection::vec(role_set(), sites),
            prop::collection::vec(prop::collection::vec(role_set(), 1..3), jobs),
            prop::collection::vec(0..jobs, 1..5),
            prop::collection::vec(0..6u64, jobs * 3 * sites),
            prop::collection::vec(
                prop::bool::weighted(if fail { 0.2 } else { 0.0 }),
                jobs * 3 * sites,
            ),
        )
            .prop_map(|(site_roles, jobs, list, millis, fails)| Plan {
                site_roles,
                jobs,
                list,
                millis,
                fails,
            })
    })
}

#[derive(Debug, Clone)]
struct Record {
    site: String,
    invocation: usize,
    start: u64,
    end: u64,
}

#[derive(Default)]
struct Recorder {
    tick: AtomicU64,
    records: Mutex<Vec<Record>>,
    /// Invocation of each action start, keyed by action id.
    running: Mutex<HashMap<String, (String, u64)>>,
}

fn build(
    plan: &Plan,
    recorder: &Arc<Recorder>,
    barrier: Option<Arc<tokio::sync::Barrier>>,
) -> (SiteStore, Jobs, Vec<String>) {
    let sites = SiteStore::new();
    for (i, roles) in plan.site_roles.iter().enumerate() {
        sites.add(format!("s{i}"), roles, json!({}));
    }
    let n_sites = plan.site_roles.len();
    let mut jobs = Jobs::new();
    let names: Vec<String> = (0..plan.jobs.len()).map(|j| format!("j{j}")).collect();
    for (j, actions) in plan.jobs.iter().enumerate() {
        for (a, roles) in actions.iter().enumerate() {
            let recorder = recorder.clone();
            let plan = plan.clone();
            let barrier = barrier.clone();
            jobs.add(
                &names[j],
                roles,
                action(move |ctx| {
                    let recorder = recorder.clone();
                    let barrier = barrier.clone();
                    let site: usize = ctx.site.name()[1..].parse().unwrap();
                    let slot = (j * 3 + a) * n_sites + site;
                    let millis = plan.millis[slot];
                    let fail = plan.fails[slot];
                    async move {
                        let start = recorder.tick.fetch_add(1, Ordering::SeqCst);
                        recorder
                            .running
                            .lock()
                            .unwrap()
                            .insert(ctx.id.clone(), (ctx.site.name().to_owned(), start));
                        if let Some(b) = barrier {
                            b.wait().await;
                        }
                        tokio::time::sleep(Duration::from_millis(millis)).await;
                        let end = recorder.tick.fetch_add(1, Ordering::SeqCst);
                        recorder.records.lock().unwrap().push(Record {
                            site: ctx.site.name().to_owned(),
                            invocation: usize::MAX, // filled in from the outcomes
                            start,
                            end,
                        });
                        if fail {
                            Err(ctx.fail("planned failure"))
                        } else {
                            Ok(())
                        }
                    }
                }),
            );
        }
    }
    let list = plan.list.iter().map(|&j| names[j].clone()).collect();
    (sites, jobs, list)
}

fn run(
    plan: &Plan,
    schedule: impl Fn(Vec<String>) -> Schedule,
    barrier: Option<Arc<tokio::sync::Barrier>>,
) -> (Vec<Record>, ScheduleResult) {
    let recorder = Arc::new(Recorder::default());
    let (sites, jobs, list) = build(plan, &recorder, barrier);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
        tokio::time::timeout(Duration::from_secs(3600), batch.run(&schedule(list)))
            .await
            .expect("the schedule finished")
            .unwrap()
    });
    // Fill in each record's invocation from the outcomes (by action id).
    let ids: HashMap<String, usize> = result
        .outcomes
        .iter()
        .filter_map(|o| o.id.clone().map(|id| (id, o.invocation)))
        .collect();
    let running = recorder.running.lock().unwrap().clone();
    let mut records = recorder.records.lock().unwrap().clone();
    for r in &mut records {
        let id = running
            .iter()
            .find(|(_, (site, start))| *site == r.site && *start == r.start)
            .map(|(id, _)| id.clone())
            .unwrap();
        r.invocation = ids[&id];
    }
    (records, result)
}

fn overlap(a: &Record, b: &Record) -> bool {
    a.start < b.end && b.start < a.end
}

/// Every expected (invocation, site, action) appears once, ran or skipped.
fn check_complete(plan: &Plan, result: &ScheduleResult) -> Result<(), TestCaseError> {
    let mut expected = HashSet::new();
    for (k, &j) in plan.list.iter().enumerate() {
        for (a, roles) in plan.jobs[j].iter().enumerate() {
            for (s, site_roles) in plan.site_roles.iter().enumerate() {
                if roles.iter().any(|r| site_roles.contains(r)) {
                    expected.insert((k, format!("s{s}"), a));
                }
            }
        }
    }
    let got: Vec<(usize, String, usize)> = result
        .outcomes
        .iter()
        .map(|o| (o.invocation, o.site.clone(), o.action))
        .collect();
    let unique: HashSet<_> = got.iter().cloned().collect();
    prop_assert_eq!(
        unique.len(),
        got.len(),
        "an action ran twice for one site and invocation"
    );
    prop_assert_eq!(unique, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn site_sequential_keeps_each_sites_order(plan in plan(false)) {
        let (records, result) = run(&plan, Schedule::new, None);
        check_complete(&plan, &result)?;
        for a in &records {
            for b in &records {
                if a.site == b.site && a.invocation < b.invocation {
                    prop_assert!(a.end < b.start, "site {} overlaps or reorders {a:?} {b:?}", a.site);
                }
            }
        }
    }

    #[test]
    fn sequential_never_overlaps_two_jobs(plan in plan(false)) {
        let (records, result) = run(&plan, |l| Schedule::new(l).mode(Mode::Sequential), None);
        check_complete(&plan, &result)?;
        for a in &records {
            for b in &records {
                if a.invocation < b.invocation {
                    prop_assert!(a.end < b.start, "jobs overlap: {a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn atomic_one_unit_at_a_time_in_job_major_order(plan in plan(false)) {
        let (records, result) = run(&plan, |l| Schedule::new(l).mode(Mode::Atomic), None);
        check_complete(&plan, &result)?;
        let site_index = |s: &str| s[1..].parse::<usize>().unwrap();
        for a in &records {
            for b in &records {
                let (ka, kb) = ((a.invocation, site_index(&a.site)), (b.invocation, site_index(&b.site)));
                if ka < kb {
                    prop_assert!(a.end < b.start, "atomic order broken: {a:?} {b:?}");
                }
                if ka != kb {
                    prop_assert!(!overlap(a, b));
                }
            }
        }
    }

    #[test]
    fn parallel_starts_everything_before_anything_finishes(plan in plan(false)) {
        let total = {
            let mut n = 0;
            for &j in &plan.list {
                for roles in &plan.jobs[j] {
                    n += plan.site_roles.iter().filter(|sr| roles.iter().any(|r| sr.contains(r))).count();
                }
            }
            n
        };
        // Every action waits until all have started: only possible if all run at once.
        let barrier = Arc::new(tokio::sync::Barrier::new(total.max(1)));
        let (records, result) = run(&plan, |l| Schedule::new(l).mode(Mode::Parallel), Some(barrier));
        check_complete(&plan, &result)?;
        if records.is_empty() {
            return Ok(()); // no action matched any site
        }
        let last_start = records.iter().map(|r| r.start).max().unwrap();
        let first_end = records.iter().map(|r| r.end).min().unwrap();
        prop_assert!(last_start < first_end);
    }

    #[test]
    fn fanout_bounds_busy_sites(plan in plan(false), k in 1..4usize, mode in 0..4usize) {
        let mode = Mode::ALL[mode];
        let (records, _) = run(&plan, |l| Schedule::new(l).mode(mode).fanout(k), None);
        for r in &records {
            // Sites busy at the moment r starts.
            let busy: HashSet<&String> = records
                .iter()
                .filter(|o| o.start <= r.start && r.start < o.end)
                .map(|o| &o.site)
                .collect();
            prop_assert!(busy.len() <= k, "{} sites busy with fanout {k} ({mode:?})", busy.len());
        }
    }

    #[test]
    fn break_on_error_stops_exactly_what_it_should(plan in plan(true), mode in 0..3usize) {
        let mode = [Mode::SiteSequential, Mode::Sequential, Mode::Atomic][mode];
        let (_, result) = run(&plan, |l| Schedule::new(l).mode(mode).break_on_error(true), None);
        check_complete(&plan, &result)?;
        let failures: Vec<_> = result.outcomes.iter().filter(|o| o.status.is_failed()).collect();
        for o in result.outcomes.iter().filter(|o| o.id.is_some()) {
            for f in &failures {
                let after = match mode {
                    Mode::SiteSequential => f.site == o.site && o.invocation > f.invocation,
                    Mode::Sequential => o.invocation > f.invocation,
                    _ => o.started > f.finished,
                };
                prop_assert!(!after, "{o:?} ran after failure {f:?}");
            }
        }
        // Skipped only because of a failure before it.
        for o in result.outcomes.iter().filter(|o| matches!(o.status, Status::Skipped(_))) {
            let cause = failures.iter().any(|f| match mode {
                Mode::SiteSequential => f.site == o.site && f.invocation < o.invocation,
                Mode::Sequential => f.invocation < o.invocation,
                _ => true,
            });
            prop_assert!(cause, "{o:?} skipped without a failure before it");
        }
    }

    #[test]
    fn max_failures_stops_starting_work(plan in plan(true), m in 1..3usize) {
        let (_, result) = run(&plan, |l| Schedule::new(l).max_failures(m), None);
        check_complete(&plan, &result)?;
        for o in result.outcomes.iter().filter(|o| o.id.is_some()) {
            let failed_before: HashSet<&String> = result
                .outcomes
                .iter()
                .filter(|f| f.status.is_failed() && f.finished < o.started)
                .map(|f| &f.site)
                .collect();
            prop_assert!(failed_before.len() < m, "{o:?} started after {} sites failed", failed_before.len());
        }
    }
}

#[tokio::test]
async fn a_panicking_action_fails_alone_and_releases_its_locks() {
    let sites = SiteStore::new();
    sites.add(["a", "b"], "r", json!({}));
    let mut jobs = Jobs::new();
    jobs.add(
        "boom",
        "r",
        action(|ctx| async move {
            if ctx.site.name() == "a" {
                panic!("kaboom");
            }
            Ok(())
        }),
    );
    jobs.add("after", "r", action(|_| async { Ok(()) }));
    let mutex = polyshell_sched::NamedMutex::new("only-one");
    jobs.lock("boom", mutex.clone());
    jobs.lock("after", mutex);
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        batch.run(&Schedule::new(["boom", "after"])),
    )
    .await
    .expect("a panic must not leave a lock held")
    .unwrap();
    let status = |site: &str, job: &str| {
        result
            .outcomes
            .iter()
            .find(|o| o.site == site && o.job == job)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(
        status("a", "boom"),
        Status::Failed("the action panicked: kaboom".into())
    );
    assert_eq!(status("b", "boom"), Status::Ok);
    assert_eq!(status("a", "after"), Status::Ok);
}

#[tokio::test]
async fn ids_chains_shared_spawn_and_missing_jobs() {
    let sites = SiteStore::new();
    sites.add(["x", "y"], (), json!({}));
    let mut jobs = Jobs::new();
    jobs.add(
        "x",
        (),
        action(|ctx| async move {
            assert_eq!(ctx.issuer, format!("[{}] x", ctx.id));
            assert!(ctx.id.starts_with(&format!("{}-", ctx.batch)));
            let shared = ctx.shared.clone();
            ctx.spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                shared.set("spawned", true);
                Ok(())
            });
            Ok(())
        }),
    );
    jobs.add(
        "y",
        (),
        action(|ctx| async move {
            Err(ctx.fail(format!("saw spawned = {:?}", ctx.shared.get("spawned"))))
        }),
    );
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
    let first = batch.run(&Schedule::new(["x"])).await.unwrap();
    assert_eq!(first.id, format!("{}-1", batch.id()));
    assert!(first.ok(), "the action waited for its spawned work");
    let second = batch.run(&Schedule::new(["y"])).await.unwrap();
    assert_eq!(second.id, format!("{}-2", batch.id()));
    assert_eq!(
        second.failed_sites(),
        vec![("y".to_owned(), "saw spawned = Some(Bool(true))".to_owned())]
    );
    let err = batch
        .run(&Schedule::new(["nope"]).name("s"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown job `nope`"), "{err}");
    assert!(batch
        .run(&Schedule::new(["nope", "x"]).allow_missing_job(true))
        .await
        .unwrap()
        .ok());
}
