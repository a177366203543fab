//! The schedule engine of Polyshell: jobs (clusters of actions bound to roles), schedules that
//! order them, batches of chained schedules sharing state, and the lock primitives that bound
//! the work.
//!
//! - [`Jobs`]: named jobs; [`action`] makes an action from an async closure over an
//!   [`ActionContext`] (site, ready shell, shared space, ids, report/debug, spawn, fail).
//! - [`Schedule`]: jobs in a [`Mode`] (`site-sequential`, `sequential`, `atomic`,
//!   `parallel`) with options (`break_on_error`, `fanout`, `max_failures`, ...).
//! - [`Batch`]: runs schedules one after another with one `shared` space, one batch id, and
//!   one shell per site (one connection, reused by every action of the batch).
//! - [`Lock`]: the lock trait, with [`SiteMutex`], [`NamedMutex`], [`Semaphore`],
//!   [`RoleSemaphore`], [`KeySemaphore`], [`Barrier`] built in; write your own for your own rules.
//! - [`Event`]: the stream reporters consume; [`ledger`] records it, a run per directory.
//!
//! This crate knows nothing of SSH: it gets shells from a [`ShellFactory`], so every schedule
//! can be tested with local shells and fakes; it builds no libssh2 (it uses `polyshell-shell`
//! without its `ssh` feature; add that crate with the feature for SSH shells).
//!
//! ```toml
//! [dependencies]
//! polyshell-sched = "0.1"
//! polyshell-sites = "0.1"
//! polyshell-shell = "0.1"   # for SSH shells in your ShellFactory
//! tokio = { version = "1", features = ["macros", "rt"] }
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use polyshell_sched::{action, Batch, Jobs, LocalShells, Mode, Schedule};
//! use polyshell_sites::{json, SiteStore};
//! use std::sync::Arc;
//!
//! let sites = SiteStore::new();
//! sites.add(["app1", "app2"], "app", json!({}));
//! let mut jobs = Jobs::new();
//! jobs.add("hello", "app", action(|ctx| async move {
//!     let out = ctx.shell.run("echo hello").await?;
//!     ctx.shared.set(ctx.site.name(), out.stdout_text().trim());
//!     Ok(())
//! }));
//! let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
//! let result = batch.run(&Schedule::new(["hello"]).mode(Mode::Sequential)).await.unwrap();
//! assert!(result.ok());
//! assert_eq!(batch.shared().get("app2").unwrap(), "hello");
//! # }
//! ```

#![warn(missing_docs)]

mod action_task;
mod context;
mod engine;
mod event;
mod job;
pub mod ledger;
mod lock;
mod result;
mod schedule;

pub use context::{action, ActionContext, ActionError, ActionFn, ActionResult, Shared};
pub use engine::{new_batch_id, Batch, LocalShells, ScheduleError, ShellFactory};
pub use event::{Event, EventSink, NoEvents, Tee};
pub use job::{Action, Job, Jobs};
pub use lock::{
    acquire_all, acquire_all_observed, labeled, next_order, Barrier, Guard, KeySemaphore, Lock,
    LockContext, NamedMutex, RoleSemaphore, Semaphore, SiteMutex,
};
pub use result::{ActionOutcome, ScheduleResult, SkipReason, Status};
pub use schedule::{Mode, Schedule};
