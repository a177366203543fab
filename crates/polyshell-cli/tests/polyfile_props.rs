//! Property tests of the Polyfile parser on generated near-Polyfiles (broken in every way the
//! generator can think of): it never panics, and every error has a position in the file.
//! These cover the same parser the `cargo xtask fuzz` targets do, where no fuzzer can run.

use polyshell_cli::{polyfile, subst};
use polyshell_sites::diag::Source;
use proptest::prelude::*;

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[sites.a]\n".to_owned()),
        Just("[sites.\"w[01-0\"]\n".to_owned()),
        Just("[sites.\"w[1-3,x]\"]\nroles = [\"web\"]\n".to_owned()),
        Just("[sites.\"n[5-1]\"]\n".to_owned()),
        Just("host = \"{name}.x\"\n".to_owned()),
        Just("port = \"22\"\n".to_owned()),
        Just("port = 99999\n".to_owned()),
        Just("roles = \"web\"\n".to_owned()),
        Just("[roles.web]\nuser = 1\n".to_owned()),
        Just(
            "[[jobs.j]]\nroles = [\"web\"]\nrun = \"echo {site.nope} {name} ${X} {raw:host}\"\n"
                .to_owned()
        ),
        Just("[[jobs.j]]\nsteps = [{ run = \"a\", set = \"k\" }, { bad = 1 }, 3]\n".to_owned()),
        Just("upload = { from = \"a\" }\n".to_owned()),
        Just("env = { \"1x\" = 1, A = [1] }\n".to_owned()),
        Just("timeout = -1\n".to_owned()),
        Just("[schedules.s]\nchain = [{ jobs = [\"j\", \"k\"], mode = \"x\" }, 5]\n".to_owned()),
        Just("[schedules.t]\njobs = \"j\"\nfanout = 0\n".to_owned()),
        Just("[bogus]\n".to_owned()),
        Just("= broken\n".to_owned()),
        Just("\u{feff}\u{0}\n".to_owned()),
        "[ -~]{0,30}\n",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_near_polyfile_loads_or_reports_positioned_errors(parts in prop::collection::vec(fragment(), 0..12)) {
        let text: String = parts.concat();
        let lines = text.lines().count().max(1) + 1;
        if let Err(diags) = polyfile::load(&Source::new("p.toml", text.clone())) {
            prop_assert!(!diags.is_empty());
            for d in diags {
                prop_assert!(d.line >= 1 && d.line <= lines && d.column >= 1, "{}", d);
            }
        }
        for (offset, name) in subst::placeholders(&text) {
            prop_assert_eq!(&text[offset + 1..offset + 1 + name.len()], name.as_str());
        }
    }
}
