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

/// Every site's roles, as the scheduler asks at schedule build and the summary: linear in
/// the sites (it was a scan of every role per site, and every site is a role).
fn roles_of_every_site(c: &mut Criterion) {
    let mut group = c.benchmark_group("site_store");
    group.sample_size(10);
    for n in [1_000usize, 10_000] {
        let sites = SiteStore::new();
        for rack in 0..10 {
            let names = range::expand(&format!("r{rack}n[1-{}]", n / 10)).unwrap();
            sites.add(names, ["compute", &format!("rack{rack}")], json!({}));
        }
        let names = sites.list("all", ());
        group.bench_function(format!("roles_of every site, {n} sites"), |b| {
            b.iter(|| {
                let total: usize = names.iter().map(|s| sites.roles_of(s).len()).sum();
                assert_eq!(total, n * 3);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, add_and_list_100k, roles_of_every_site);
criterion_main!(benches);
