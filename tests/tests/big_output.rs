//! A gigabyte of output streams through with bounded memory. Alone in its test binary, so
//! the process's peak RSS is this test's.

mod common;

use common::{bounded, ssh};
use polyshell_shell::{Command, Line, OutputSink};
use polyshell_tests::Fleet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Peak resident set size of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[derive(Default)]
struct Counter {
    bytes: AtomicU64,
    lines: AtomicU64,
}

impl OutputSink for Counter {
    fn line(&self, _: &str, line: Line<'_>) {
        self.bytes.fetch_add(
            line.bytes.len() as u64 + u64::from(line.newline),
            Ordering::Relaxed,
        );
        self.lines.fetch_add(1, Ordering::Relaxed);
    }
}

const GIGABYTE: u64 = 1_000_000_000;
/// What streaming a gigabyte may add to the peak RSS: the capture limit (1 MiB), bounded
/// event queues, libssh2's window. Without streaming it would be a gigabyte.
const BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn a_gigabyte_of_output_streams_in_bounded_memory() {
    let fleet = Fleet::load();
    let counter = Arc::new(Counter::default());
    let shell = ssh(&fleet, "site009").with_sink(counter.clone());
    shell.run("true").await.unwrap(); // connected before measuring
    let before = peak_rss_kib();
    // 32-byte lines, a gigabyte of them.
    let command = Command::new(format!(
        "yes 0123456789abcdef0123456789abcde | head -c {GIGABYTE}"
    ))
    .capture_limit(1024 * 1024);
    let out = bounded("1 GB of output", 600, shell.run(command))
        .await
        .unwrap();
    let growth = peak_rss_kib().saturating_sub(before);
    assert!(out.status.success());
    assert_eq!(
        counter.bytes.load(Ordering::Relaxed),
        GIGABYTE,
        "every byte streamed"
    );
    assert_eq!(counter.lines.load(Ordering::Relaxed), GIGABYTE / 32);
    assert_eq!(out.stdout.len(), 1024 * 1024, "capture keeps its limit");
    assert_eq!(out.stdout_dropped, GIGABYTE - 1024 * 1024);
    assert!(out.stdout_text().ends_with("more bytes not captured]\n"));
    assert!(
        growth < BOUND_KIB,
        "peak RSS grew by {growth} KiB (bound {BOUND_KIB} KiB)"
    );
    println!("1 GB streamed; peak RSS growth {growth} KiB");
}
