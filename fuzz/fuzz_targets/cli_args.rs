//! The CLI's arguments: any argv (NUL-separated pieces of the input) is accepted or refused
//! with a usage error (exit 2), never a panic, an abort or an exhausting expansion; every
//! duration it takes is finite, more than zero and at most a year.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polyshell_cli::{cli::check_arguments, exit, values};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut args = vec!["polyshell"];
    args.extend(text.split('\0'));
    if let Err(e) = check_arguments(&args) {
        assert_eq!(e.status, exit::USAGE, "{args:?}: {}", e.message);
    }
    for piece in text.split('\0') {
        if let Ok(d) = values::duration(piece) {
            assert!(d.as_secs_f64() > 0.0009 && d.as_secs_f64() <= values::MAX_SECONDS, "{piece}");
        }
        let _ = values::positive(piece);
    }
});
