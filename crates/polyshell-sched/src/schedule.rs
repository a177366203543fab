//! Schedules: a list of job names run in one mode, with options.

use crate::lock::Lock;
use polyshell_sites::Names;
use std::sync::Arc;

/// How the jobs of a schedule are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// On each site the jobs run in order, one at a time; sites progress independently.
    #[default]
    SiteSequential,
    /// One job at a time: it runs on all its sites; the next starts when it finished everywhere.
    Sequential,
    /// One job on one site at a time, across the whole schedule (a strict rolling order).
    Atomic,
    /// Every action of every job on every site starts at once.
    Parallel,
}

impl Mode {
    /// The mode's name, as the Polyfile and `--mode` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SiteSequential => "site-sequential",
            Mode::Sequential => "sequential",
            Mode::Atomic => "atomic",
            Mode::Parallel => "parallel",
        }
    }

    /// Every mode.
    pub const ALL: [Mode; 4] = [
        Mode::SiteSequential,
        Mode::Sequential,
        Mode::Atomic,
        Mode::Parallel,
    ];
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown mode `{s}` (site-sequential, sequential, atomic, parallel)")
            })
    }
}

/// A list of jobs and how to run them.
///
/// ```
/// use polyshell_sched::{Mode, Schedule};
/// let s = Schedule::new(["update", "deploy"]).mode(Mode::SiteSequential).break_on_error(true).fanout(10);
/// ```
#[derive(Clone)]
pub struct Schedule {
    /// The job names, in order.
    pub jobs: Vec<String>,
    /// How the jobs are ordered.
    pub mode: Mode,
    /// Only sites in these roles (all sites when empty).
    pub roles: Vec<String>,
    /// The schedule's name (events, ledger).
    pub name: String,
    /// What it is for.
    pub desc: String,
    /// Stop at a failure: `site-sequential`, that site runs no later job; `sequential`, no later job starts; `atomic`, nothing starts after it.
    pub break_on_error: bool,
    /// A job name the batch does not have is skipped instead of failing the schedule.
    pub allow_missing_job: bool,
    /// At most this many sites busy at once.
    pub fanout: Option<usize>,
    /// Stop starting work once this many sites failed.
    pub max_failures: Option<usize>,
    /// Emit `starting job: NAME` lines.
    pub log: bool,
    /// Pass actions' `report` messages on.
    pub report: bool,
    /// Pass actions' `debug` messages on.
    pub debug: bool,
    /// Drop command output and reports (results and failures still count).
    pub quiet: bool,
    /// Locks taken around every job's actions on each site.
    pub locks: Vec<Arc<dyn Lock>>,
}

impl Schedule {
    /// A schedule of `jobs` in the default mode (`site-sequential`).
    pub fn new(jobs: impl Names) -> Schedule {
        Schedule {
            jobs: jobs.to_names(),
            mode: Mode::default(),
            roles: Vec::new(),
            name: String::new(),
            desc: String::new(),
            break_on_error: false,
            allow_missing_job: false,
            fanout: None,
            max_failures: None,
            log: false,
            report: true,
            debug: false,
            quiet: false,
            locks: Vec::new(),
        }
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Schedule {
        self.mode = mode;
        self
    }
    /// Runs only on sites in `roles`.
    pub fn roles(mut self, roles: impl Names) -> Schedule {
        self.roles = roles.to_names();
        self
    }
    /// Sets the name (shown in events and the ledger).
    pub fn name(mut self, name: &str) -> Schedule {
        self.name = name.to_owned();
        self
    }
    /// Sets the description.
    pub fn desc(mut self, desc: &str) -> Schedule {
        self.desc = desc.to_owned();
        self
    }
    /// Stops at a failure (see [`Schedule::break_on_error`](Schedule#structfield.break_on_error)).
    pub fn break_on_error(mut self, on: bool) -> Schedule {
        self.break_on_error = on;
        self
    }
    /// Skips a job name the batch does not have instead of failing.
    pub fn allow_missing_job(mut self, on: bool) -> Schedule {
        self.allow_missing_job = on;
        self
    }
    /// At most `n` sites busy at once.
    pub fn fanout(mut self, n: usize) -> Schedule {
        self.fanout = Some(n.max(1));
        self
    }
    /// Stops starting work once `n` sites failed.
    pub fn max_failures(mut self, n: usize) -> Schedule {
        self.max_failures = Some(n);
        self
    }
    /// Emits `starting job: NAME` lines.
    pub fn log(mut self, on: bool) -> Schedule {
        self.log = on;
        self
    }
    /// Passes actions' `report` messages on.
    pub fn report(mut self, on: bool) -> Schedule {
        self.report = on;
        self
    }
    /// Passes actions' `debug` messages on.
    pub fn debug(mut self, on: bool) -> Schedule {
        self.debug = on;
        self
    }
    /// Drops command output and reports.
    pub fn quiet(mut self, on: bool) -> Schedule {
        self.quiet = on;
        self
    }
    /// Attaches `lock`: taken around every job's actions on each site.
    pub fn lock(mut self, lock: Arc<dyn Lock>) -> Schedule {
        self.locks.push(lock);
        self
    }
}
