//! One action on one site, and the work it spawned: run to the end, each piece abortable
//! when the run is cancelled, a panic failing that action alone.

use crate::context::{ActionContext, ActionResult};
use crate::result::Status;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

/// Aborts the work an action spawned when the action is dropped (cancelled) before it
/// waited for that work: spawned work belongs to its action.
struct AbortSpawned(Arc<Mutex<Vec<tokio::task::JoinHandle<ActionResult>>>>);

impl Drop for AbortSpawned {
    fn drop(&mut self) {
        for handle in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            handle.abort();
        }
    }
}

/// Aborts one spawned task if dropped while still armed.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Runs one action and the work it spawned (its locks were taken with the unit's); a
/// panic fails it alone.
pub(crate) async fn run_action(action: crate::job::Action, ctx: ActionContext) -> Status {
    let spawned = ctx.spawned.clone();
    let _abort = AbortSpawned(spawned.clone());
    let body = AssertUnwindSafe((action.run)(ctx)).catch_unwind().await;
    let mut status = match body {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(e)) => Status::Failed(e.to_string()),
        Err(panic) => Status::Failed(format!("the action panicked: {}", panic_message(&panic))),
    };
    // Wait for the work the action spawned, including work spawned by that work. Each
    // handle stays abortable while awaited: a cancel now aborts it and all still listed.
    loop {
        let next = {
            let mut list = spawned.lock().unwrap_or_else(|p| p.into_inner());
            (!list.is_empty()).then(|| list.remove(0))
        };
        let Some(handle) = next else { break };
        let mut abort = AbortOnDrop(Some(handle.abort_handle()));
        let joined = handle.await;
        abort.0 = None;
        let outcome = match joined {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) if e.is_panic() => Some(format!(
                "spawned work panicked: {}",
                panic_message(&e.into_panic())
            )),
            Err(e) => Some(format!("spawned work failed: {e}")),
        };
        if let (Some(why), Status::Ok) = (outcome, &status) {
            status = Status::Failed(why);
        }
    }
    status
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
