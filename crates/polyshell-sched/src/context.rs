//! What an action gets: its site, a ready shell, the batch's shared space, ids, and ways to
//! report, spawn concurrent work, and fail.

use crate::event::{Event, EventSink};
use dashmap::DashMap;
use futures::future::BoxFuture;
use polyshell_shell::{Shell, ShellError};
use polyshell_sites::{Site, Value};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Why an action failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// A command could not run to its end (connection, timeout, sudo, transfer, ...).
    #[error(transparent)]
    Shell(Arc<ShellError>),
    /// The site's configuration has a value of the wrong type.
    #[error(transparent)]
    Config(#[from] polyshell_sites::ConfigError),
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed with {status}")]
    CommandFailed {
        /// The command's first line (shortened).
        command: String,
        /// How it exited.
        status: polyshell_shell::ExitStatus,
    },
    /// The action's own reason ([`ActionContext::fail`]).
    #[error("{0}")]
    Failed(String),
}

impl ActionError {
    /// An error with the action's own reason.
    pub fn new(msg: impl Into<String>) -> ActionError {
        ActionError::Failed(msg.into())
    }
}

impl From<ShellError> for ActionError {
    fn from(e: ShellError) -> ActionError {
        ActionError::Shell(Arc::new(e))
    }
}

impl From<String> for ActionError {
    fn from(s: String) -> ActionError {
        ActionError::Failed(s)
    }
}

impl From<&str> for ActionError {
    fn from(s: &str) -> ActionError {
        ActionError::Failed(s.to_owned())
    }
}

/// The batch-wide shared object space: values that jobs hand to later jobs and to later
/// schedules of the chain. Clones share it.
#[derive(Clone, Default)]
pub struct Shared {
    values: Arc<DashMap<String, Value>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("keys", &self.values.len())
            .finish()
    }
}

impl Shared {
    /// Stores `value` under `key` for the steps and jobs after this one.
    pub fn set(&self, key: impl Into<String>, value: impl Into<Value>) {
        self.values.insert(key.into(), value.into());
    }

    /// A copy of the value at `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.values.get(key).map(|v| v.clone())
    }

    /// Changes the value at `key` in place (created as `null` first).
    pub fn update<R>(&self, key: &str, f: impl FnOnce(&mut Value) -> R) -> R {
        let mut entry = self.values.entry(key.to_owned()).or_insert(Value::Null);
        f(&mut entry)
    }
}

/// The result of an action.
pub type ActionResult = Result<(), ActionError>;

/// An action: an async closure over its context.
pub type ActionFn = Arc<dyn Fn(ActionContext) -> BoxFuture<'static, ActionResult> + Send + Sync>;

/// Makes an [`ActionFn`] from an async closure.
///
/// ```
/// use polyshell_sched::action;
/// let a = action(|ctx| async move {
///     ctx.shell.run("uptime").await?;
///     Ok(())
/// });
/// ```
pub fn action<F, Fut>(f: F) -> ActionFn
where
    F: Fn(ActionContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ActionResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

/// What an action gets. Cheap to clone (clones share the spawned-work list).
#[derive(Clone)]
pub struct ActionContext {
    /// The site and its configuration (shared, read-only).
    pub site: Arc<Site>,
    /// A shell for the site, ready (the batch's connection), tagged with this action's issuer.
    pub shell: Shell,
    /// The batch's shared space.
    pub shared: Shared,
    /// Batch id.
    pub batch: String,
    /// Action id, `BATCH-N-M`.
    pub id: String,
    /// `[BATCH-N-M] SITE`: tags every line of this action.
    pub issuer: String,
    /// The job's name.
    pub job: String,
    /// This action's place among the job's actions on this site (1-based), and their count.
    pub fragment: usize,
    /// How many actions of this job run on this site at once (one per action of the job).
    pub fragments: usize,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) spawned: Arc<Mutex<Vec<tokio::task::JoinHandle<ActionResult>>>>,
}

impl std::fmt::Debug for ActionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionContext")
            .field("issuer", &self.issuer)
            .field("job", &self.job)
            .finish()
    }
}

impl ActionContext {
    /// A message for the run's report (shown unless the schedule turns reports off).
    pub fn report(&self, message: impl Into<String>) {
        self.events.event(Event::Report {
            action: self.id.clone(),
            site: self.site.name().to_owned(),
            message: message.into(),
        });
    }

    /// A debug message (shown only when the schedule has `debug`).
    pub fn debug(&self, message: impl Into<String>) {
        self.events.event(Event::Debug {
            action: self.id.clone(),
            site: self.site.name().to_owned(),
            message: message.into(),
        });
    }

    /// Starts concurrent work that the action waits for before it counts as done (the
    /// original's `this.async()`); a failure of any of it fails the action.
    pub fn spawn(&self, work: impl Future<Output = ActionResult> + Send + 'static) {
        let handle = tokio::spawn(work);
        self.spawned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// An error to return from the action: `return Err(ctx.fail("why"))`.
    pub fn fail(&self, why: impl Into<String>) -> ActionError {
        ActionError::Failed(why.into())
    }
}
