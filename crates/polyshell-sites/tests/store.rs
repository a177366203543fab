//! The original Polyshell's documented site/role examples, replayed; and the store's
//! invariants as properties.

use polyshell_sites::{json, SiteStore, Value};
use proptest::prelude::*;

const NONE: () = ();

#[test]
fn original_examples() {
    let sites = SiteStore::new();
    sites.add(["site1", "site2"], NONE, json!({"x": "1", "y": "2"}));
    sites.add(
        ["site2"],
        NONE,
        json!({"z": 3, "info": {"tags": ["test", "online"], "timeout": 4000}}),
    );
    sites.add(["site2"], NONE, json!({"info": {"tags": ["busy"]}}));
    assert_eq!(
        Value::Object(sites.get("site2").unwrap().into_config()),
        json!({"name": "site2", "x": "1", "y": "2", "z": 3, "info": {"tags": ["busy"]}})
    );
    assert_eq!(
        Value::Object(sites.get("site1").unwrap().into_config()),
        json!({"name": "site1", "x": "1", "y": "2"})
    );
}

#[test]
fn a_role_is_not_a_site_and_copies_are_copies() {
    let sites = SiteStore::new();
    sites.add(["www1", "www2"], ["www"], json!({"port": 22}));
    assert!(sites.get("www").is_none());
    let mut copy = sites.get("www1").unwrap().into_config();
    copy.insert("port".into(), json!(2222));
    copy.insert("name".into(), json!("changed"));
    assert_eq!(sites.get("www1").unwrap().config()["port"], 22);
    assert_eq!(sites.get("www1").unwrap().name(), "www1");
}

#[test]
fn roles_own_name_all_filter_and_update() {
    let sites = SiteStore::new();
    sites.add(["local"], NONE, json!({"scripts": "~/scripts"}));
    sites.add(
        ["appsvr-busy"],
        ["app", "primary"],
        json!({"host": "app1.example.com"}),
    );
    sites.add(
        ["appsvr-standby"],
        ["app"],
        json!({"host": "app2.example.com"}),
    );
    assert_eq!(sites.list(["app"], NONE), ["appsvr-busy", "appsvr-standby"]);
    assert_eq!(sites.list(["app"], ["primary"]), ["appsvr-busy"]);
    assert_eq!(sites.list(["local"], NONE), ["local"]);
    assert_eq!(
        sites.list(["all"], NONE),
        ["local", "appsvr-busy", "appsvr-standby"]
    );
    assert_eq!(sites.list(["nosuch"], NONE), Vec::<String>::new());

    sites.update(
        ["app"],
        ["monitored"],
        json!({"admin": "admin@example.com"}),
    );
    assert_eq!(
        sites.get("appsvr-standby").unwrap().config()["admin"],
        "admin@example.com"
    );
    assert!(sites.get("local").unwrap().config().get("admin").is_none());
    assert_eq!(
        sites.list(["monitored"], NONE),
        ["appsvr-busy", "appsvr-standby"]
    );
    // update creates no sites
    sites.update(["nosuch"], ["x"], json!({"a": 1}));
    assert_eq!(sites.len(), 3);
}

#[test]
fn typed_values_follow_roles() {
    struct Notifier(&'static str);
    let sites = SiteStore::new();
    sites.add(["a", "b"], ["app"], json!({}));
    sites.add(["c"], NONE, json!({}));
    sites.put_value(["app"], Notifier("pager"));
    assert_eq!(
        sites.get("a").unwrap().value::<Notifier>().unwrap().0,
        "pager"
    );
    assert!(sites.get("c").unwrap().value::<Notifier>().is_none());
    assert!(sites.get("a").unwrap().value::<String>().is_none());
}

#[test]
fn typed_accessors_name_the_site_and_key() {
    let sites = SiteStore::new();
    sites.add(
        ["s"],
        NONE,
        json!({"host": "h", "port": 2222, "timeout": 1.5, "env": {"A": "x", "N": 3}, "user": 7}),
    );
    let s = sites.get("s").unwrap();
    assert_eq!(s.host().unwrap(), Some("h"));
    assert_eq!(s.port().unwrap(), Some(2222));
    assert_eq!(
        s.timeout().unwrap(),
        Some(std::time::Duration::from_millis(1500))
    );
    assert_eq!(s.env().unwrap().get("N").map(String::as_str), Some("3"));
    let err = s.user().unwrap_err();
    assert_eq!(err.to_string(), "site `s`: `user` must be a string, not 7");
    sites.add(["s"], NONE, json!({"port": 70000}));
    assert!(sites.get("s").unwrap().port().is_err());
}

#[test]
fn concurrent_adds_keep_every_site_once() {
    let sites = SiteStore::new();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let sites = sites.clone();
            scope.spawn(move || {
                for i in 0..500 {
                    let name = format!("s{}", (i * 7 + t) % 1000);
                    sites.add([name.as_str()], ["r"], json!({ "t": t }));
                }
            });
        }
    });
    let listed = sites.list(["r"], NONE);
    let unique: std::collections::HashSet<_> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len());
    assert_eq!(listed.len(), sites.len());
}

fn small_name() -> impl Strategy<Value = String> {
    "[a-e][0-9]?"
}

proptest! {
    /// `list` never repeats a site, is in order of addition, and asking again gives the
    /// same answer.
    #[test]
    fn list_is_unique_and_stable(
        adds in prop::collection::vec((prop::collection::vec(small_name(), 1..4), prop::collection::vec("[rst]", 0..3)), 1..30),
        query in prop::collection::vec("[rst]|[a-e][0-9]?", 1..4),
    ) {
        let sites = SiteStore::new();
        let mut order: Vec<String> = Vec::new();
        for (names, roles) in &adds {
            sites.add(names, roles, json!({}));
            for n in names {
                if !order.contains(n) {
                    order.push(n.clone());
                }
            }
        }
        let listed = sites.list(&query, NONE);
        let unique: std::collections::HashSet<_> = listed.iter().collect();
        prop_assert_eq!(unique.len(), listed.len());
        let positions: Vec<usize> = listed.iter().map(|n| order.iter().position(|o| o == n).unwrap()).collect();
        prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(listed, sites.list(&query, NONE));
        prop_assert_eq!(sites.list(["all"], NONE), order);
    }

    /// Shallow merge: adding a then b equals adding (a merged with b), top-level keys of b
    /// overwriting; so sequences of adds merge associatively.
    #[test]
    fn merge_is_associative_shallow_overwrite(
        a in prop::collection::btree_map("[k-n]", 0u8..4, 0..4),
        b in prop::collection::btree_map("[k-n]", 0u8..4, 0..4),
        c in prop::collection::btree_map("[k-n]", 0u8..4, 0..4),
    ) {
        let to_json = |m: &std::collections::BTreeMap<String, u8>| json!(m);
        let one = SiteStore::new();
        for m in [&a, &b, &c] {
            one.add(["s"], NONE, to_json(m));
        }
        let mut bc = b.clone();
        bc.extend(c.clone());
        let two = SiteStore::new();
        two.add(["s"], NONE, to_json(&a));
        two.add(["s"], NONE, to_json(&bc));
        prop_assert_eq!(one.get("s"), two.get("s"));
        let mut abc = a.clone();
        abc.extend(bc);
        let site = one.get("s").unwrap();
        for (k, v) in &abc {
            prop_assert_eq!(&site.config()[k.as_str()], &json!(v));
        }
    }
}
