//! The Polyfile parser and checker: no panic, no hang, every error positioned inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polyshell_cli::{polyfile, subst};
use polyshell_sites::diag::Source;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count().max(1) + 1;
    if let Err(diags) = polyfile::load(&Source::new("fuzz.toml", text)) {
        assert!(!diags.is_empty());
        for d in diags {
            assert!(d.line >= 1 && d.line <= lines && d.column >= 1, "{d}");
        }
    }
    for (offset, name) in subst::placeholders(text) {
        assert_eq!(&text[offset..offset + 1], "{");
        assert_eq!(&text[offset + 1..offset + 1 + name.len()], name);
    }
});
