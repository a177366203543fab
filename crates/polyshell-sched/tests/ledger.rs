//! The ledger from a program built on the scheduler: a `Recorder` beside the program's own
//! sink (`Tee`) records a batch's events, which read back as the same events.

use polyshell_sched::ledger::{Ledger, Retention};
use polyshell_sched::{action, Batch, Event, Jobs, LocalShells, Mode, Schedule, Tee};
use polyshell_sites::{json, SiteStore};
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "current_thread")]
async fn a_batch_recorded_through_a_tee_reads_back_as_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new(dir.path().join("runs"), Retention::default());
    let sites = SiteStore::new();
    sites.add(["a1", "a2", "a3"], "app", json!({}));
    let mut jobs = Jobs::new();
    jobs.add(
        "hello",
        "app",
        action(|ctx| async move {
            // Bytes that are not UTF-8 travel too (as base64).
            let out = ctx
                .shell
                .run(format!("printf 'hi %s\\377\\n' {}", ctx.site.name()))
                .await?;
            if ctx.site.name() == "a2" {
                return Err(format!("a2 says no ({})", out.status).into());
            }
            Ok(())
        }),
    );
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let mine = {
        let seen = seen.clone();
        move |e: Event| seen.lock().unwrap().push(e)
    };
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
    let recorder = ledger.record(batch.id(), serde_json::Map::new()).unwrap();
    let batch = batch.with_events(Arc::new(Tee(vec![Arc::new(mine), recorder.clone()])));
    let result = batch
        .run(&Schedule::new(["hello"]).mode(Mode::Parallel))
        .await
        .unwrap();
    assert_eq!(result.failed_sites().len(), 1);
    recorder.finish(serde_json::json!({"status": 1})).unwrap();

    let run = ledger.find("last").unwrap();
    assert_eq!(run.id, batch.id());
    assert_eq!(run.summary.as_ref().unwrap()["status"], 1);
    let recorded: Vec<String> = run
        .events()
        .unwrap()
        .iter()
        .map(|v| format!("{:?}", Event::from_json(v).expect("an event")))
        .collect();
    // Elapsed times are recorded in milliseconds: what was seen, at that precision.
    let seen: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| format!("{:?}", Event::from_json(&e.to_json()).unwrap()))
        .collect();
    // The schedule_finished event comes back with its counts only (no outcomes).
    let strip = |events: &[String]| -> Vec<String> {
        events
            .iter()
            .filter(|e| !e.starts_with("ScheduleFinished"))
            .cloned()
            .collect()
    };
    assert_eq!(strip(&recorded), strip(&seen));
    assert_eq!(recorded.len(), seen.len());
    assert!(recorded.iter().any(|e| e.contains("a2 says no")));
    assert!(
        recorded
            .iter()
            .any(|e| e.contains("line: [104, 105, 32, 97, 49, 255]")),
        "{recorded:?}"
    );
}
