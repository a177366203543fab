//! Host patterns (ranges and set operators): no panic; an error points inside the pattern;
//! what expands folds back to the same names. Seeds: fuzz/seeds/ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polyshell_sites::range::{expand, fold};
use std::collections::BTreeSet;

fuzz_target!(|data: &[u8]| {
    let Ok(pattern) = std::str::from_utf8(data) else { return };
    match expand(pattern) {
        // (An empty set, `a!a`, folds to nothing: there is no pattern to expand again.)
        Ok(names) if !names.is_empty() && names.len() <= 10_000 && names.iter().all(|n| !n.is_empty()) => {
            let folded = fold(&names);
            let again: BTreeSet<String> = expand(&folded).expect("a fold expands").into_iter().collect();
            assert_eq!(again, names.into_iter().collect::<BTreeSet<_>>(), "{pattern} -> {folded}");
        }
        Ok(_) => {}
        Err(e) => assert!(e.offset <= pattern.len()),
    }
});
