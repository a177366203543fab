//! The structured event stream reporters consume: schedules and actions starting and
//! finishing, output lines, reports.

use crate::result::{ScheduleResult, SkipReason, Status};
use base64::Engine;
use polyshell_shell::Stream;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Something that happened in a batch. Ids: schedule `BATCH-N`, action `BATCH-N-M`.
#[derive(Debug, Clone)]
pub enum Event {
    /// A schedule run started.
    ScheduleStarted {
        /// The schedule run's id (`BATCH-N`).
        schedule: String,
        /// The schedule's name.
        name: String,
        /// The schedule's mode (`site-sequential`, ...).
        mode: String,
        /// The jobs, in order.
        jobs: Vec<String>,
        /// How many sites it runs on.
        sites: usize,
    },
    /// An action started on a site.
    ActionStarted {
        /// The action run's id (`BATCH-N-M`).
        action: String,
        /// The schedule run's id (`BATCH-N`).
        schedule: String,
        /// The job.
        job: String,
        /// The site.
        site: String,
    },
    /// A line of a command's output (bytes as they came, without the line end).
    Output {
        /// The action run's id (`BATCH-N-M`).
        action: String,
        /// The site.
        site: String,
        /// Standard output or standard error.
        stream: Stream,
        /// The line, without its newline.
        line: Vec<u8>,
        /// Whether the line ended with a newline (the last one of a stream may not).
        newline: bool,
    },
    /// `report(msg)` of an action, or a log line (`starting job: deploy`).
    Report {
        /// The action run's id (`BATCH-N-M`).
        action: String,
        /// The site.
        site: String,
        /// The message.
        message: String,
    },
    /// `debug(msg)` of an action (shown only with the schedule's `debug`).
    Debug {
        /// The action run's id (`BATCH-N-M`).
        action: String,
        /// The site.
        site: String,
        /// The message.
        message: String,
    },
    /// An action finished on a site.
    ActionFinished {
        /// The action run's id (`BATCH-N-M`).
        action: String,
        /// The job.
        job: String,
        /// The site.
        site: String,
        /// Ok, failed (why) or skipped (why).
        status: Status,
        /// How long it took.
        elapsed: Duration,
    },
    /// A schedule run finished.
    ScheduleFinished {
        /// The schedule run's id (`BATCH-N`).
        schedule: String,
        /// What every action of the schedule did.
        result: ScheduleResult,
    },
    /// A job's work on a site waits for a lock that is not free (sent only then).
    LockWaiting {
        /// The schedule run's id (`BATCH-N`).
        schedule: String,
        /// The job.
        job: String,
        /// The site.
        site: String,
        /// The lock's name.
        lock: String,
    },
    /// ...and has it now, after `waited`.
    LockAcquired {
        /// The schedule run's id (`BATCH-N`).
        schedule: String,
        /// The job.
        job: String,
        /// The site.
        site: String,
        /// The lock's name.
        lock: String,
        /// How long the site waited for it.
        waited: Duration,
    },
}

impl Event {
    /// The event as one JSON object: what `--output json` prints, one per line, and what
    /// the run ledger records. A line that is not UTF-8 is carried as `line_base64`.
    pub fn to_json(&self) -> Value {
        match self {
            Event::ScheduleStarted {
                schedule,
                name,
                mode,
                jobs,
                sites,
            } => {
                json!({"event": "schedule_started", "schedule": schedule, "name": name, "mode": mode, "jobs": jobs, "sites": sites})
            }
            Event::ActionStarted {
                action,
                schedule,
                job,
                site,
            } => {
                json!({"event": "action_started", "id": action, "schedule": schedule, "job": job, "site": site})
            }
            Event::Output {
                action,
                site,
                stream,
                line,
                newline,
            } => {
                let mut v = json!({"event": "output", "id": action, "site": site, "stream": stream_name(*stream), "newline": newline});
                match std::str::from_utf8(line) {
                    Ok(text) => v["line"] = json!(text),
                    Err(_) => {
                        v["line_base64"] =
                            json!(base64::engine::general_purpose::STANDARD.encode(line))
                    }
                }
                v
            }
            Event::Report {
                action,
                site,
                message,
            } => json!({"event": "report", "id": action, "site": site, "message": message}),
            Event::Debug {
                action,
                site,
                message,
            } => json!({"event": "debug", "id": action, "site": site, "message": message}),
            Event::ActionFinished {
                action,
                job,
                site,
                status,
                elapsed,
            } => {
                let (status, reason) = status.to_json();
                json!({"event": "action_finished", "id": action, "job": job, "site": site, "status": status, "reason": reason, "elapsed_ms": elapsed.as_millis() as u64})
            }
            Event::ScheduleFinished { schedule, result } => {
                let (ok, failed, skipped) = result.counts();
                json!({"event": "schedule_finished", "schedule": schedule, "ok": ok, "failed": failed, "skipped": skipped, "elapsed_ms": result.elapsed.as_millis() as u64})
            }
            Event::LockWaiting {
                schedule,
                job,
                site,
                lock,
            } => {
                json!({"event": "lock_waiting", "schedule": schedule, "job": job, "site": site, "lock": lock})
            }
            Event::LockAcquired {
                schedule,
                job,
                site,
                lock,
                waited,
            } => {
                json!({"event": "lock_acquired", "schedule": schedule, "job": job, "site": site, "lock": lock, "waited_ms": waited.as_millis() as u64})
            }
        }
    }

    /// The event [`to_json`](Event::to_json) made, read back (`None` for anything else).
    /// A `schedule_finished` comes back with its counts only: its result holds no outcome.
    pub fn from_json(v: &Value) -> Option<Event> {
        let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let millis =
            |key: &str| Duration::from_millis(v.get(key).and_then(Value::as_u64).unwrap_or(0));
        Some(match v.get("event")?.as_str()? {
            "schedule_started" => Event::ScheduleStarted {
                schedule: text("schedule")?,
                name: text("name")?,
                mode: text("mode")?,
                jobs: v
                    .get("jobs")?
                    .as_array()?
                    .iter()
                    .filter_map(|j| j.as_str().map(str::to_owned))
                    .collect(),
                sites: v.get("sites")?.as_u64()? as usize,
            },
            "action_started" => Event::ActionStarted {
                action: text("id")?,
                schedule: text("schedule")?,
                job: text("job")?,
                site: text("site")?,
            },
            "output" => Event::Output {
                action: text("id")?,
                site: text("site")?,
                stream: match v.get("stream")?.as_str()? {
                    "stderr" => Stream::Stderr,
                    _ => Stream::Stdout,
                },
                line: match (text("line"), text("line_base64")) {
                    (Some(line), _) => line.into_bytes(),
                    (None, Some(b64)) => {
                        base64::engine::general_purpose::STANDARD.decode(b64).ok()?
                    }
                    (None, None) => return None,
                },
                newline: v.get("newline")?.as_bool()?,
            },
            "report" => Event::Report {
                action: text("id")?,
                site: text("site")?,
                message: text("message")?,
            },
            "debug" => Event::Debug {
                action: text("id")?,
                site: text("site")?,
                message: text("message")?,
            },
            "action_finished" => Event::ActionFinished {
                action: text("id")?,
                job: text("job")?,
                site: text("site")?,
                status: Status::from_json(&text("status")?, text("reason").as_deref())?,
                elapsed: millis("elapsed_ms"),
            },
            "schedule_finished" => Event::ScheduleFinished {
                schedule: text("schedule")?,
                result: ScheduleResult {
                    id: text("schedule")?,
                    elapsed: millis("elapsed_ms"),
                    ..ScheduleResult::default()
                },
            },
            "lock_waiting" => Event::LockWaiting {
                schedule: text("schedule")?,
                job: text("job")?,
                site: text("site")?,
                lock: text("lock")?,
            },
            "lock_acquired" => Event::LockAcquired {
                schedule: text("schedule")?,
                job: text("job")?,
                site: text("site")?,
                lock: text("lock")?,
                waited: millis("waited_ms"),
            },
            _ => return None,
        })
    }
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

impl Status {
    /// `("ok" | "failed" | "skipped", reason)`, as the JSON events carry it.
    pub fn to_json(&self) -> (&'static str, Option<String>) {
        match self {
            Status::Ok => ("ok", None),
            Status::Failed(why) => ("failed", Some(why.clone())),
            Status::Skipped(why) => ("skipped", Some(why.to_string())),
        }
    }

    /// The status [`to_json`](Status::to_json) made, read back.
    pub fn from_json(status: &str, reason: Option<&str>) -> Option<Status> {
        Some(match status {
            "ok" => Status::Ok,
            "failed" => Status::Failed(reason.unwrap_or_default().to_owned()),
            "skipped" => Status::Skipped(
                [
                    SkipReason::BreakOnError,
                    SkipReason::MaxFailures,
                    SkipReason::Stopped,
                ]
                .into_iter()
                .find(|r| Some(r.to_string().as_str()) == reason)
                .unwrap_or(SkipReason::Stopped),
            ),
            _ => return None,
        })
    }
}

/// Receives events; called from the tasks doing the work, so keep it quick.
///
/// A sink of your own (a dashboard, a chat notifier, a metrics exporter), handed to
/// [`Batch::with_events`](crate::Batch::with_events):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use polyshell_sched::{action, Batch, Event, EventSink, Jobs, LocalShells, Schedule, Status};
/// use polyshell_sites::{json, SiteStore};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// /// Counts failed actions as they happen.
/// #[derive(Default)]
/// struct Failures(AtomicUsize);
///
/// impl EventSink for Failures {
///     fn event(&self, event: Event) {
///         if let Event::ActionFinished { status: Status::Failed(_), .. } = event {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// let sites = SiteStore::new();
/// sites.add(["a", "b"], "app", json!({}));
/// let mut jobs = Jobs::new();
/// jobs.add("fail-on-b", "app", action(|ctx| async move {
///     if ctx.site.name() == "b" { return Err(ctx.fail("planned")); }
///     Ok(())
/// }));
/// let failures = Arc::new(Failures::default());
/// let batch = Batch::new(sites, jobs, Arc::new(LocalShells)).with_events(failures.clone());
/// batch.run(&Schedule::new(["fail-on-b"])).await.unwrap();
/// assert_eq!(failures.0.load(Ordering::Relaxed), 1);
/// # }
/// ```
pub trait EventSink: Send + Sync {
    /// Receives one event (called from many tasks: it must not block for long).
    fn event(&self, event: Event);
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn event(&self, event: Event) {
        self(event)
    }
}

/// Discards every event.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn event(&self, _: Event) {}
}

/// Every event to each of several sinks, in order (a reporter and the run ledger, say).
pub struct Tee(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn event(&self, event: Event) {
        if let Some((last, rest)) = self.0.split_last() {
            for sink in rest {
                sink.event(event.clone());
            }
            last.event(event);
        }
    }
}
