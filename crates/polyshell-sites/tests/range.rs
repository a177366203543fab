//! Host ranges: expand and fold round-trip.

use polyshell_sites::range::{expand, fold};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn name() -> impl Strategy<Value = String> {
    // Names as fleets have them: letters, digits (with and without zero padding), - and .
    "[a-c]{1,2}(0?[0-9]{1,2})?(-?[a-b][0-9]{0,2})?(\\.[a-b])?"
}

fn pattern() -> impl Strategy<Value = String> {
    let bracket =
        prop::collection::vec((0u32..30, 0u32..6, any::<bool>()), 1..3).prop_map(|items| {
            let body: Vec<String> = items
                .into_iter()
                .map(|(lo, len, pad)| {
                    let hi = lo + len;
                    if pad {
                        format!("{lo:02}-{hi:02}")
                    } else if len == 0 {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            format!("[{}]", body.join(","))
        });
    prop::collection::vec(("[a-c]{1,2}", bracket, prop::option::of("[a-b]")), 1..3).prop_map(
        |terms| {
            terms
                .into_iter()
                .map(|(p, b, s)| format!("{p}{b}{}", s.unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        },
    )
}

proptest! {
    #[test]
    fn expand_of_fold_is_the_same_names(names in prop::collection::btree_set(name(), 0..40)) {
        let folded = fold(&names);
        let back: BTreeSet<String> = if names.is_empty() {
            BTreeSet::new()
        } else {
            expand(&folded).unwrap().into_iter().collect()
        };
        prop_assert_eq!(back, names, "folded: {}", folded);
    }

    #[test]
    fn fold_of_expand_names_the_same_set(p in pattern()) {
        let names = expand(&p).unwrap();
        let folded = fold(&names);
        let again: BTreeSet<String> = expand(&folded).unwrap().into_iter().collect();
        prop_assert_eq!(again, names.iter().cloned().collect::<BTreeSet<_>>(), "folded: {}", folded);
        // Folding is canonical: folding the re-expanded names gives the same text.
        prop_assert_eq!(fold(expand(&folded).unwrap()), folded.clone());
    }

    /// Any input: an answer or an error with an offset inside the pattern, never a panic.
    #[test]
    fn expand_never_panics(s in "[a-c0-9\\[\\]\\-,/]{0,16}") {
        if let Err(e) = expand(&s) {
            prop_assert!(e.offset <= s.len());
        }
    }
}
