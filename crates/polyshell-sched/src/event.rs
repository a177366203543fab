//! The structured event stream reporters consume: schedules and actions starting and
//! finishing, output lines, reports.

use crate::result::{ScheduleResult, Status};
use polyshell_shell::Stream;
use std::time::Duration;

/// Something that happened in a batch. Ids: schedule `BATCH-N`, action `BATCH-N-M`.
#[derive(Debug, Clone)]
pub enum Event {
    ScheduleStarted {
        schedule: String,
        name: String,
        mode: String,
        jobs: Vec<String>,
        sites: usize,
    },
    ActionStarted {
        action: String,
        schedule: String,
        job: String,
        site: String,
    },
    /// A line of a command's output (bytes as they came, without the line end).
    Output {
        action: String,
        site: String,
        stream: Stream,
        line: Vec<u8>,
        newline: bool,
    },
    /// `report(msg)` of an action, or a log line (`starting job: deploy`).
    Report {
        action: String,
        site: String,
        message: String,
    },
    /// `debug(msg)` of an action (shown only with the schedule's `debug`).
    Debug {
        action: String,
        site: String,
        message: String,
    },
    ActionFinished {
        action: String,
        job: String,
        site: String,
        status: Status,
        elapsed: Duration,
    },
    ScheduleFinished {
        schedule: String,
        result: ScheduleResult,
    },
}

/// Receives events; called from the tasks doing the work, so keep it quick.
pub trait EventSink: Send + Sync {
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
