//! Host patterns against ClusterShell's nodeset semantics: the examples of its documentation
//! (`nodeset -e`/`-f` output, written here as expected sets) and the patterns its own test
//! suite (NodeSetErrorTest, RangeSetErrorTest) rejects. Plus the algebra of the operators,
//! checked against a plain set model over random patterns.

use polyshell_sites::range::{expand, expand_with, fold, Groups, MAX_EXPANSION};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn set(pattern: &str) -> BTreeSet<String> {
    expand(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .into_iter()
        .collect()
}

fn names(list: &str) -> BTreeSet<String> {
    list.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn documented_expansions() {
    let cases = [
        (
            "node[13-15,17-19]",
            "node13 node14 node15 node17 node18 node19",
        ),
        ("node[0-6/2]", "node0 node2 node4 node6"),
        ("node[08-11]", "node08 node09 node10 node11"),
        ("node[000-012/4]", "node000 node004 node008 node012"),
        ("node-01[01,09,42]", "node-0101 node-0109 node-0142"),
        (
            "node-[1-2]0-[0-2]5",
            "node-10-05 node-10-15 node-10-25 node-20-05 node-20-15 node-20-25",
        ),
        (
            "node-00[1-6]0",
            "node-0010 node-0020 node-0030 node-0040 node-0050 node-0060",
        ),
        ("node[1-2]x[1-2]", "node1x1 node1x2 node2x1 node2x2"),
        (
            "node[1-4],node[5-9]",
            "node1 node2 node3 node4 node5 node6 node7 node8 node9",
        ),
        (
            "node[1-9]!node6",
            "node1 node2 node3 node4 node5 node7 node8 node9",
        ),
        ("node[1-9]&node[6-12]", "node6 node7 node8 node9"),
        (
            "node[1-9]^node[6-11]",
            "node1 node2 node3 node4 node5 node10 node11",
        ),
        ("node[1-9]!node6&node[6-12]", "node7 node8 node9"),
        (
            "foo[-100--90/2]",
            "foo-100 foo-98 foo-96 foo-94 foo-92 foo-90",
        ),
        ("n[-2-2]", "n-2 n-1 n0 n1 n2"),
        ("bar002,bar01", "bar002 bar01"),
        ("b2,b1,b0,b,c,a0,a", "a a0 b b0 b1 b2 c"),
        (" web1 ,  web2\t", "web1 web2"),
        ("n[1 - 3, 5]", "n1 n2 n3 n5"),
        ("n[3/1]", "n3"),
        ("nova[1-2]p0", "nova1p0 nova2p0"),
        ("x4nova[1-2]p0", "x4nova1p0 x4nova2p0"),
        ("n[1-2]x0[3-4]", "n1x03 n1x04 n2x03 n2x04"),
        ("n[1-3,2-4]", "n1 n2 n3 n4"),
        ("10.0.0.[1-3]", "10.0.0.1 10.0.0.2 10.0.0.3"),
        // Names of digits only are names (ClusterShell 1.9 and later).
        ("nova3,5,[7-8]", "nova3 5 7 8"),
        ("n[-3/2]", "n-3"),
    ];
    for (pattern, expected) in cases {
        assert_eq!(set(pattern), names(expected), "{pattern}");
    }
    assert_eq!(expand("node-00[00-99]").unwrap().len(), 100);
    assert_eq!(expand("node-00[00-99]").unwrap()[0], "node-0000");
    assert_eq!(expand("dc[1-2]n[1-99]").unwrap().len(), 198);
    assert_eq!(expand("foo[-10-10]").unwrap().len(), 21);
    // The example: a set minus itself is empty, not 153,664 names.
    assert!(set("yellow[45-240,570-764,800]!yellow[45-240,570-764,800]").is_empty());
    // Sorted as `nodeset -e` prints: by text, then by number (not by character).
    assert_eq!(expand("n10,n9,n1").unwrap(), ["n1", "n9", "n10"]);
}

#[test]
fn rejected_as_clustershell_rejects() {
    let long = "3".repeat(101);
    let mut bad: Vec<String> = Vec::new();
    for (pre, post) in [("nova", ""), ("nova", "p0"), ("x4nova", "p0")] {
        for range in [
            "[]",
            "[-]",
            "[A]",
            "[2-5/a]",
            "[3/2]",
            "[3-/2]",
            "[-/2]",
            "[4-a/2]",
            "[4-3/2]",
            "[4-5/-2]",
            "[4-2/-2]",
            "[004-002]",
            "[3-59/2,102a]",
            "[3-59/2,,102]",
            &long,
        ] {
            bad.push(format!("{pre}{range}{post}"));
        }
    }
    for pattern in [
        "",
        "   ",
        "nova[3-59/2,102",
        "nova3,nova4,,nova6",
        "nova6,",
        "nova6[",
        "nova6]",
        "n6[1-4]]",
        "n[1-4]0[3-4]",
        "n6[1-4][3-4]",
        "n6[1-4]56[3-4]",
        "[1-30][4-9]",
        "[1-30][4-9]p",
        "x[1-30][4-9]p",
        "x[1-30]p4-9]",
        "xazer][1-30]p[4-9]",
        "xa[[zer[1-30]p[4-9]",
        "foo!",
        "foo,",
        "foo&",
        "foo^",
        "c[1-30]c[1-2]!",
        "!foo",
        ",foo",
        "&foo",
        "^foo",
        "!c[1-30]c[1-2]",
        "!",
        ",",
        "&",
        "^",
        ",,,",
        "foo,,bar",
        // Padding mismatches, steps on one number, digits between brackets.
        "n[1-044]",
        "0[7-10]",
        "n0[7-10]",
        "n[3/2]",
        "n[01-100]",
        // Negative ranges: no padding, no digits against them.
        "n[-05-5]",
        "n1[-5-5]",
        "n[-5-5]0",
        "n[1-2/2]0",
        "web 1",
        "@",
    ] {
        bad.push(pattern.to_owned());
    }
    for pattern in &bad {
        match expand(pattern) {
            Ok(names) => panic!("`{pattern}` should be rejected, expanded to {names:?}"),
            Err(e) => {
                assert!(e.offset <= pattern.len(), "{pattern}: offset {}", e.offset);
                assert!(e.to_string().contains("at character"), "{e}");
            }
        }
    }
}

#[test]
fn errors_name_the_character() {
    let e = expand("web[1-3]!web2,,db").unwrap_err();
    assert_eq!(e.offset, 14, "{e}");
    let e = expand("web[1-3],db[1-044]").unwrap_err();
    assert_eq!(e.offset, 12, "{e}");
    assert!(e.message.contains("padding"), "{e}");
    let e = expand("n[1-4]0[3-4]").unwrap_err();
    assert_eq!(e.offset, 6, "{e}");
    let e = expand("a, b c").unwrap_err();
    assert_eq!(e.offset, 4, "{e}");
}

struct Roles;

impl Groups for Roles {
    fn group(&self, name: &str) -> Result<Vec<String>, String> {
        match name {
            "web" => Ok(expand("web[01-04]").unwrap()),
            "eu" => Ok(names("web01 web02 db1").into_iter().collect()),
            "all" => Ok(expand("web[01-04],db[1-2]").unwrap()),
            "io1" | "io2" => Ok(vec![format!("{name}-node")]),
            _ => Err(format!("no role `{name}` (roles: eu, io1, io2, web)")),
        }
    }
}

#[test]
fn groups_take_part_in_the_algebra() {
    let with = |p: &str| -> BTreeSet<String> {
        expand_with(p, &Roles)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .into_iter()
            .collect()
    };
    assert_eq!(with("@web!web03"), names("web01 web02 web04"));
    assert_eq!(with("@web&@eu"), names("web01 web02"));
    assert_eq!(with("@all!@web"), names("db1 db2"));
    assert_eq!(with("@*^@eu"), names("web03 web04 db2"));
    assert_eq!(with("@io[1-2]"), names("io1-node io2-node"));
    let e = expand_with("@web,@nope", &Roles).unwrap_err();
    assert_eq!(e.offset, 5);
    assert!(e.message.contains("roles: eu"), "{e}");
    assert!(expand("@web").is_err(), "no groups without a resolver");
}

/// Small patterns over a few names, with operators.
fn item() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["a", "b", "ab"]),
        0u32..12,
        0u32..6,
        prop::bool::ANY,
    )
        .prop_map(|(p, lo, len, pad)| {
            if pad {
                format!("{p}[{lo:02}-{:02}]", lo + len)
            } else {
                format!("{p}[{lo}-{}]", lo + len)
            }
        })
}

fn model(pattern_items: &[(char, String)]) -> BTreeSet<String> {
    let mut acc = BTreeSet::new();
    for (op, item) in pattern_items {
        let s = set(item);
        acc = match op {
            ',' => acc.union(&s).cloned().collect(),
            '!' => acc.difference(&s).cloned().collect(),
            '&' => acc.intersection(&s).cloned().collect(),
            _ => acc.symmetric_difference(&s).cloned().collect(),
        };
    }
    acc
}

proptest! {

    /// The in-place comparison and the packed key sort exactly as the keys `nodeset -e`
    /// order by.
    #[test]
    fn natural_cmp_agrees_with_sort_key(a in "[a-c0-9.%s-]{0,8}", b in "[a-c0-9.%s-]{0,8}") {
        prop_assert_eq!(
            polyshell_sites::range::natural_cmp(&a, &b),
            polyshell_sites::range::sort_key(&a).cmp(&polyshell_sites::range::sort_key(&b)),
            "{:?} {:?}", a, b
        );
        prop_assert_eq!(
            polyshell_sites::range::packed_key(&a).cmp(&polyshell_sites::range::packed_key(&b)),
            polyshell_sites::range::sort_key(&a).cmp(&polyshell_sites::range::sort_key(&b)),
            "{:?} {:?}", a, b
        );
    }
    /// Left to right, each operator is the set operation of a plain set model.
    #[test]
    fn operators_follow_the_set_model(
        first in item(),
        rest in prop::collection::vec((prop::sample::select(vec![',', '!', '&', '^']), item()), 0..5),
    ) {
        let mut items = vec![(',', first)];
        items.extend(rest);
        let text: String = items
            .iter()
            .enumerate()
            .map(|(i, (op, it))| if i == 0 { it.clone() } else { format!("{op}{it}") })
            .collect();
        prop_assert_eq!(set(&text), model(&items), "{}", text);
        // fold ∘ expand names the same set, and folding is canonical.
        let folded = fold(expand(&text).unwrap());
        if !folded.is_empty() {
            prop_assert_eq!(set(&folded), model(&items), "{} -> {}", text, folded);
            prop_assert_eq!(fold(expand(&folded).unwrap()), folded.clone());
        }
    }

    /// The laws: A!A and A^A are empty, A&A and A,A are A, A!B and B are disjoint.
    #[test]
    fn algebra_laws(a in item(), b in item()) {
        let (self_diff, self_xor) = (set(&format!("{a}!{a}")), set(&format!("{a}^{a}")));
        prop_assert!(self_diff.is_empty());
        prop_assert!(self_xor.is_empty());
        prop_assert_eq!(set(&format!("{a}&{a}")), set(&a));
        prop_assert_eq!(set(&format!("{a},{a}")), set(&a));
        let diff = set(&format!("{a}!{b}"));
        prop_assert!(diff.is_disjoint(&set(&b)));
        prop_assert_eq!(
            set(&format!("{a}^{b}")),
            set(&format!("{a}!{b}")).union(&set(&format!("{b}!{a}"))).cloned().collect::<BTreeSet<_>>()
        );
    }
}

#[test]
fn the_budget_counts_every_item() {
    let half = MAX_EXPANSION / 2 + 1;
    let e = expand(&format!("n[1-{half}]!n[1-{half}]")).unwrap_err();
    assert!(e.message.contains("more than"), "{e}");
}
