//! `cargo xtask fuzz`: the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer),
//! each for a bounded time. A crash fails the run and leaves its input in
//! `fuzz/artifacts/TARGET/`: turn it into a regression test.

use anyhow::{bail, Context, Result};
use std::process::Command;

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
        let status = Command::new(&cargo)
            .current_dir(&root)
            // cargo-fuzz passes flags that stable rustc accepts only under RUSTC_BOOTSTRAP; no
            // sanitizer, as this toolchain ships no sanitizer runtimes.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .args(&dirs)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .status()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        if !status.success() {
            bail!("fuzz target {target} found a failure: see fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}
