//! Loading `[sites]` and `[roles]`: the good path, and every kind of bad inventory with the
//! exact position of each error (snapshots).

use polyshell_sites::{diag::Source, inventory};

fn errors(text: &str) -> String {
    match inventory::load(&Source::new("Polyfile.toml", text)) {
        Ok(store) => panic!("expected errors, loaded {} sites", store.len()),
        Err(diags) => diags.to_string(),
    }
}

#[test]
fn loads_ranges_roles_and_name_substitution() {
    let text = r#"
[sites.local]
scripts = "~/repository/scripts"

[sites.appsvr-busy]
roles = ["app", "primary"]
host = "app1.example.com"

[sites."web[01-20]"]
roles = ["web"]
host = "{name}.example.com"
port = 2222

[roles.app]
admin = "admin@example.com"
password_agent = "ops"

[roles.web]
port = 22
user = "deploy"
"#;
    let store = inventory::load(&Source::new("Polyfile.toml", text)).unwrap();
    assert_eq!(store.len(), 22);
    assert_eq!(store.list("web", ()).len(), 20);
    let web07 = store.get("web07").unwrap();
    assert_eq!(web07.host().unwrap(), Some("web07.example.com"));
    assert_eq!(
        web07.port().unwrap(),
        Some(2222),
        "the site's own key wins over its role's"
    );
    assert_eq!(web07.user().unwrap(), Some("deploy"));
    let busy = store.get("appsvr-busy").unwrap();
    assert_eq!(busy.password_agent().unwrap(), Some("ops"));
    assert_eq!(store.list("primary", ()), ["appsvr-busy"]);
    assert!(store.get("local").unwrap().host().unwrap().is_none());
}

#[test]
fn overlapping_ranges_that_agree_merge() {
    let text = r#"
[sites."n[1-3]"]
roles = ["a"]
x = 1
[sites."n[3-4]"]
roles = ["b"]
x = 1
y = 2
"#;
    let store = inventory::load(&Source::new("Polyfile.toml", text)).unwrap();
    assert_eq!(store.list("a", "b"), ["n3"]);
    assert_eq!(store.get("n3").unwrap().config()["y"], 2);
}

#[test]
fn unclosed_range() {
    insta::assert_snapshot!(errors("[sites.\"web[01-03\"]\nhost = \"h\"\n"));
}

#[test]
fn reversed_range() {
    insta::assert_snapshot!(errors("[sites.\"db[5-1]\"]\nhost = \"h\"\n"));
}

#[test]
fn duplicate_site_with_conflicting_config() {
    insta::assert_snapshot!(errors(
        "[sites.\"web[1-3]\"]\nuser = \"a\"\n\n[sites.\"web[3-5]\"]\nuser = \"b\"\n"
    ));
}

#[test]
fn role_referring_to_nothing() {
    insta::assert_snapshot!(errors(
        "[sites.a]\nroles = [\"web\"]\n\n[roles.wbe]\nuser = \"x\"\n"
    ));
}

#[test]
fn wrong_value_types() {
    insta::assert_snapshot!(errors(
        "[sites.a]\nport = \"ssh\"\nhost = 5\nroles = \"web\"\nenv = [1]\ntimeout = \"soon\"\n"
    ));
}

#[test]
fn check_accepts_exactly_what_the_run_applies() {
    // Keys the run read with rules of its own, which `check` let through before.
    let all = errors(
        "[sites.a]\nssh = 5\nargs = [\"-v\", 2]\nproxy_jump = 3\n[sites.b]\nssh = \"\"\nargs = \"-o 'unclosed\"\n",
    );
    for want in [
        "site `a`: `ssh` must be `true`, `false` or the name of an ssh program, not 5",
        "site `a`: `args` must be a list of strings, or one string of shell words",
        "site `a`: `proxy_jump` must be a string, not 3",
        "site `b`: `ssh` must be",
        "site `b`: `args` must be",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // Every key `check` accepts is read back by the same accessor the run uses.
    let store = inventory::load(&Source::new(
        "Polyfile.toml",
        "[sites.c]\nhost = \"c\"\nssh = true\nargs = \"-o 'A B'\"\ntimeout = 0.5\n",
    ))
    .unwrap();
    let c = store.get("c").unwrap();
    assert_eq!(c.ssh_program(), Ok(Some("ssh")));
    assert_eq!(c.ssh_args(), Ok(vec!["-o".to_owned(), "A B".to_owned()]));
    assert_eq!(c.timeout(), Ok(Some(std::time::Duration::from_millis(500))));
    for key in polyshell_sites::inventory::KNOWN_SITE_KEYS {
        assert!(c.check_key(key).is_some(), "{key} has no accessor");
    }
    assert!(c.check_key("scripts").is_none());
}

#[test]
fn all_errors_are_reported_together() {
    let text = "[sites.\"a[2-1]\"]\n[sites.b]\nport = 0\n[roles.nobody]\nx = 1\n";
    let all = errors(text);
    assert_eq!(all.lines().count(), 3, "{all}");
    insta::assert_snapshot!(all);
}

#[test]
fn broken_toml() {
    insta::assert_snapshot!(errors("[sites.a]\nhost = \n"));
}
