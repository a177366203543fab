//! A custom lock written outside the crate: at most one site per datacenter at a time, the
//! datacenter read from each site's `datacenter` config key. A rolling restart across
//! datacenters that never takes two machines of one datacenter down together.
//!
//! `cargo run -p polyshell-sched --example datacenter_lock`

use async_trait::async_trait;
use polyshell_sched::{
    action, next_order, Batch, Guard, Jobs, LocalShells, Lock, LockContext, Schedule,
};
use polyshell_sites::{json, SiteStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One site per datacenter at a time.
pub struct OnePerDatacenter {
    order: u64,
    datacenters: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl OnePerDatacenter {
    pub fn new() -> Arc<OnePerDatacenter> {
        Arc::new(OnePerDatacenter {
            order: next_order(),
            datacenters: Mutex::default(),
        })
    }
}

#[async_trait]
impl Lock for OnePerDatacenter {
    async fn acquire(&self, ctx: &LockContext) -> Guard {
        let dc = ctx
            .site
            .string("datacenter")
            .ok()
            .flatten()
            .unwrap_or("unknown")
            .to_owned();
        let mutex = self
            .datacenters
            .lock()
            .unwrap()
            .entry(dc)
            .or_default()
            .clone();
        Guard::new(mutex.lock_owned().await)
    }

    fn order(&self) -> u64 {
        self.order
    }

    fn name(&self) -> String {
        "one site per datacenter".into()
    }
}

/// Site, datacenter, start tick, end tick.
pub type Run = (String, String, u64, u64);

/// Restarts 9 sites in 3 datacenters, all at once but for the lock; returns, per site, its
/// datacenter and its (start, end) in logical ticks.
pub async fn rolling_restart() -> Vec<Run> {
    let sites = SiteStore::new();
    for (i, dc) in [
        "fra", "fra", "fra", "ams", "ams", "ams", "lon", "lon", "lon",
    ]
    .iter()
    .enumerate()
    {
        sites.add(format!("web{i}"), "web", json!({ "datacenter": dc }));
    }
    let tick = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let log: Arc<Mutex<Vec<Run>>> = Arc::default();
    let mut jobs = Jobs::new();
    let (t, l) = (tick.clone(), log.clone());
    jobs.add(
        "restart",
        "web",
        action(move |ctx| {
            let (tick, log) = (t.clone(), l.clone());
            async move {
                let start = tick.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ctx.shell.run("sleep 0.05").await?;
                let end = tick.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let dc = ctx
                    .site
                    .string("datacenter")
                    .ok()
                    .flatten()
                    .unwrap_or("")
                    .to_owned();
                log.lock()
                    .unwrap()
                    .push((ctx.site.name().to_owned(), dc, start, end));
                Ok(())
            }
        }),
    );
    jobs.lock("restart", OnePerDatacenter::new());
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
    let result = batch
        .run(&Schedule::new("restart").mode(polyshell_sched::Mode::Parallel))
        .await
        .unwrap();
    assert!(result.ok());
    let done = log.lock().unwrap().clone();
    done
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    for (site, dc, start, end) in rolling_restart().await {
        println!("{site} ({dc}): ticks {start}..{end}");
    }
}
