//! Scheduler overhead: 1,000 sites x 100 no-op jobs, site-sequential. Reports time per
//! action (criterion's time / 100,000).

use criterion::{criterion_group, criterion_main, Criterion};
use polyshell_sched::{action, Batch, Jobs, LocalShells, Schedule};
use polyshell_sites::{json, SiteStore};
use std::sync::Arc;

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sites = SiteStore::new();
    let names: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
    sites.add(&names, "all-nodes", json!({}));
    let mut jobs = Jobs::new();
    let list: Vec<String> = (0..100).map(|j| format!("job{j}")).collect();
    for name in &list {
        jobs.add(name, "all-nodes", action(|_| async { Ok(()) }));
    }
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
    let schedule = Schedule::new(list);
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10);
    group.bench_function("1000 sites x 100 no-op jobs (100k actions)", |b| {
        b.iter(|| {
            let result = rt.block_on(batch.run(&schedule)).unwrap();
            assert_eq!(result.outcomes.len(), 100_000);
        })
    });
    group.finish();
}

/// One no-op job on N sites, each site in its own role too (as every Polyfile site is): the
/// schedule build, the run and its result scale linearly with the sites (`roles_of` was a
/// scan of every role per site: quadratic). Compare the 10k time with 10x the 1k time.
fn scales_linearly(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10);
    for n in [1_000usize, 10_000] {
        let sites = SiteStore::new();
        let names: Vec<String> = (0..n).map(|i| format!("n{i:05}")).collect();
        sites.add(&names, ["all-nodes", "web"], json!({}));
        let mut jobs = Jobs::new();
        jobs.add("noop", "all-nodes", action(|_| async { Ok(()) }));
        let batch = Batch::new(sites, jobs, Arc::new(LocalShells));
        let schedule = Schedule::new(["noop"]);
        group.bench_function(format!("{n} sites x 1 no-op job"), |b| {
            b.iter(|| {
                let result = rt.block_on(batch.run(&schedule)).unwrap();
                assert_eq!(result.outcomes.len(), n);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, overhead, scales_linearly);
criterion_main!(benches);
