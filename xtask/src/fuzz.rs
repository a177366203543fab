//! `cargo xtask fuzz`: the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer),
//! each for a bounded time. A crash fails the run and leaves its input in
//! `fuzz/artifacts/TARGET/`: turn it into a regression test.

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const TARGETS: &[&str] = &["polyfile", "ranges", "cli_args"];

pub fn run(seconds: u64) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = crate::workspace_root();
    let installed = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        eprintln!("xtask: installing cargo-fuzz");
        let status = Command::new(&cargo)
            .args(["install", "--locked", "cargo-fuzz"])
            .status()?;
        if !status.success() {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    for target in TARGETS {
        eprintln!("xtask: fuzzing {target} for {seconds}s");
        // New inputs go to fuzz/corpus/TARGET; fuzz/seeds/TARGET (committed) starts it off.
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root.join("fuzz/seeds").join(target);
        let mut dirs = vec![corpus];
        dirs.extend(seeds.is_dir().then_some(seeds));
        // cargo-fuzz passes flags that stable rustc accepts only under RUSTC_BOOTSTRAP; no
        // sanitizer, as this toolchain ships no sanitizer runtimes. Built first, so that the
        // run below can be held to a deadline.
        let built = Command::new(&cargo)
            .current_dir(&root)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "build", "--sanitizer", "none", target])
            .status()
            .with_context(|| format!("running cargo fuzz build {target}"))?;
        if !built.success() {
            bail!("cargo fuzz build {target} failed");
        }
        let mut child = Command::new(&cargo)
            .current_dir(&root)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .args(&dirs)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            // Its own process group: a hung fuzzer is killed with everything it started.
            .process_group(0)
            .spawn()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        // libFuzzer's timeout handler can deadlock (it allocates inside a signal handler, and
        // the slow input may hold malloc's lock): a run past its time by a minute is killed,
        // and that is a failure too, with the slow input printed above.
        let deadline = Instant::now() + Duration::from_secs(seconds + 60);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on the process group this function started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                bail!(
                    "fuzz target {target} hung past its {seconds}s (libFuzzer stuck after a \
                     timeout: the input it printed last is too slow; make it a seed in \
                     fuzz/seeds/{target}/ once fixed)"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if !status.success() {
            bail!("fuzz target {target} found a failure: see fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}
