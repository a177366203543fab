//! Hostile host patterns are rejected in memory proportional to the pattern, not to what
//! it would expand to: a counting allocator measures the peak bytes held while each is
//! rejected (deterministic, unlike a timer). The bound is the issue's: 10 MB.

use polyshell_sites::range::{expand, MAX_EXPANSION};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(held, Ordering::SeqCst);
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LIMIT: usize = 10 * 1024 * 1024;

fn peak_while(f: impl FnOnce()) -> usize {
    let base = HELD.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - base
}

#[test]
fn hostile_patterns_are_rejected_without_materialising_them() {
    // The 103 bytes: eleven `1-999999` ranges in one bracket.
    let eleven = format!("web[{}]", ["1-999999"; 11].join(","));
    assert_eq!(eleven.len(), 103);
    let many = format!("n[{}]", ["1-999999"; 56].join(","));
    assert!(many.len() >= 500);
    // (`h{i}-`: digits against a bracket would join its numbers.)
    let terms: Vec<String> = (0..640).map(|i| format!("h{i}-[1-99999]")).collect();
    let ten_kb = terms.join(",");
    assert!(ten_kb.len() > 9_000 && ten_kb.len() < 10_240);
    let patterns = [
        eleven,
        many,
        "a[1-999999]b[1-999999]c[1-999999]".to_owned(),
        "x[1-999999],y[1-999999]".to_owned(),
        format!("n[0-{}]", MAX_EXPANSION),
        ten_kb,
        // Set operators: every item counts, so a difference of two huge sets is refused
        // before either is built.
        "n[1-999999]!n[1-999999]".to_owned(),
        "n[1-600000] & n[1-600000]".to_owned(),
        "a[1-999999]^b[1-999999]".to_owned(),
        // Digits against a bracket: the bracket is counted before its numbers are joined.
        "n1[1-99999999]".to_owned(),
        // Few names but long ones (a fuzzer's find): 5^8 = 390,625 names of ~1 KB.
        format!("{}{}", "x".repeat(1000), "[0-4]y".repeat(8)),
    ];
    // This test's binary has only this test: nothing else allocates meanwhile.
    for pattern in &patterns {
        let mut result = None;
        let peak = peak_while(|| result = Some(expand(pattern)));
        let result = result.unwrap();
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.message.contains("more than")),
            "{}...: {:?}",
            &pattern[..40.min(pattern.len())],
            result.as_ref().map(Vec::len)
        );
        assert!(
            peak < LIMIT,
            "rejecting {}... held {peak} bytes at its peak",
            &pattern[..40.min(pattern.len())]
        );
    }
}
