//! What a schedule did: per site, per action, the outcome and its timing.

use std::time::Duration;

/// Why an action did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// An earlier job failed and the schedule has `break_on_error`.
    BreakOnError,
    /// `max_failures` sites had failed already.
    MaxFailures,
    /// The run was stopped (Ctrl-C) before it started.
    Stopped,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::BreakOnError => "skipped: an earlier job failed (break_on_error)",
            SkipReason::MaxFailures => "skipped: too many sites failed (max_failures)",
            SkipReason::Stopped => "skipped: the run was stopped",
        })
    }
}

/// How one action on one site ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It succeeded.
    Ok,
    /// It failed, and why.
    Failed(String),
    /// It did not run, and why.
    Skipped(SkipReason),
}

impl Status {
    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Status::Ok)
    }
    /// Whether it failed.
    pub fn is_failed(&self) -> bool {
        matches!(self, Status::Failed(_))
    }
}

/// One action of one job invocation on one site.
#[derive(Debug, Clone)]
pub struct ActionOutcome {
    /// `BATCH-N-M`; `None` when it never started.
    pub id: Option<String>,
    /// The job's name.
    pub job: String,
    /// Position of the job in the schedule's list.
    pub invocation: usize,
    /// The site it ran on.
    pub site: String,
    /// Index of the action within its job.
    pub action: usize,
    /// Ok, failed or skipped.
    pub status: Status,
    /// Start and end, from the schedule's start (equal for skipped actions).
    pub started: Duration,
    /// When it finished, from the start of the schedule run.
    pub finished: Duration,
}

/// The outcome of a schedule.
#[derive(Debug, Clone, Default)]
pub struct ScheduleResult {
    /// `BATCH-N`.
    pub id: String,
    /// The schedule's name.
    pub name: String,
    /// Every action run, in the order they finished.
    pub outcomes: Vec<ActionOutcome>,
    /// How long the schedule run took.
    pub elapsed: Duration,
}

impl ScheduleResult {
    /// Every action ran and succeeded.
    pub fn ok(&self) -> bool {
        self.outcomes.iter().all(|o| o.status.is_ok())
    }

    /// Sites with a failed action, each with its first failure, in order of first failure.
    pub fn failed_sites(&self) -> Vec<(String, String)> {
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut by_time: Vec<&ActionOutcome> = self
            .outcomes
            .iter()
            .filter(|o| o.status.is_failed())
            .collect();
        by_time.sort_by_key(|o| o.finished);
        for o in by_time {
            if let Status::Failed(reason) = &o.status {
                if !failed.iter().any(|(s, _)| s == &o.site) {
                    failed.push((o.site.clone(), reason.clone()));
                }
            }
        }
        failed
    }

    /// Counts: (ok, failed, skipped) actions.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.outcomes
            .iter()
            .fold((0, 0, 0), |(ok, failed, skipped), o| match o.status {
                Status::Ok => (ok + 1, failed, skipped),
                Status::Failed(_) => (ok, failed + 1, skipped),
                Status::Skipped(_) => (ok, failed, skipped + 1),
            })
    }
}
