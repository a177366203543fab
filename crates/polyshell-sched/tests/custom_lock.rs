//! The datacenter lock of `examples/datacenter_lock.rs`, run: never two sites of one
//! datacenter at once, and the datacenters do overlap each other.

#[path = "../examples/datacenter_lock.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_one_site_per_datacenter() {
    let runs = example::rolling_restart().await;
    assert_eq!(runs.len(), 9);
    for a in &runs {
        for b in &runs {
            if a.0 != b.0 && a.1 == b.1 {
                assert!(
                    a.3 < b.2 || b.3 < a.2,
                    "{a:?} and {b:?} overlap in one datacenter"
                );
            }
        }
    }
    let overlapping_dcs = runs
        .iter()
        .any(|a| runs.iter().any(|b| a.1 != b.1 && a.2 < b.3 && b.2 < a.3));
    assert!(
        overlapping_dcs,
        "different datacenters should run at the same time"
    );
}
