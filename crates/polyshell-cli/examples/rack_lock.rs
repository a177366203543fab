//! The whole `polyshell` command plus a lock kind of your own, usable from the Polyfile:
//!
//! ```toml
//! [locks.racks]
//! kind = "one-per-rack"
//! key = "rack"          # the site key it reads (free fields are the kind's own)
//! ```
//!
//! Sites with the same `rack` never run together; sites without one are not held back.
use async_trait::async_trait;
use polyshell_sched::{next_order, Guard, Lock, LockContext};
use std::sync::Arc;

struct OnePerRack {
    key: String,
    order: u64,
    racks: dashmap::DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

#[async_trait]
impl Lock for OnePerRack {
    async fn acquire(&self, ctx: &LockContext) -> Guard {
        let Some(rack) = ctx.site.config().get(&self.key).map(|v| v.to_string()) else {
            return Guard::none();
        };
        let mutex = self.racks.entry(rack).or_default().clone();
        Guard::new(mutex.lock_owned().await)
    }
    fn order(&self) -> u64 {
        self.order
    }
}

fn main() -> std::process::ExitCode {
    polyshell_cli::locks::register("one-per-rack", |spec| {
        let key = match spec.fields.get("key") {
            None => "rack".to_owned(),
            Some(serde_json::Value::String(k)) => k.clone(),
            Some(_) => return Err("`key` must be a site key's name".into()),
        };
        Ok(Arc::new(OnePerRack {
            key,
            order: next_order(),
            racks: Default::default(),
        }))
    });
    std::process::ExitCode::from(polyshell_cli::cli::main())
}
