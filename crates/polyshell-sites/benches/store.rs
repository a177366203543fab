//! 100,000 sites added from host ranges, then listed by role.

use criterion::{criterion_group, criterion_main, Criterion};
use polyshell_sites::{json, range, SiteStore};

fn add_and_list_100k(c: &mut Criterion) {
    let mut group = c.benchmark_group("site_store");
    group.sample_size(10);
    group.bench_function("add 100k from ranges + list by role", |b| {
        b.iter(|| {
            let sites = SiteStore::new();
            for rack in 0..10 {
                let names = range::expand(&format!("r{rack}n[00001-10000]")).unwrap();
                sites.add(
                    names,
                    ["compute", &format!("rack{rack}")],
                    json!({"port": 22}),
                );
            }
            let all = sites.list("compute", ());
            assert_eq!(all.len(), 100_000);
            let some = sites.list("rack3", ());
            assert_eq!(some.len(), 10_000);
        })
    });
    group.finish();
}

criterion_group!(benches, add_and_list_100k);
criterion_main!(benches);
