//! Installs the Debian packages the fleet needs, when they are missing and we may.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Each needed program and the Debian package that ships it.
const NEEDED: &[(&str, &str)] = &[
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/ssh", "openssh-client"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/bin/sudo", "sudo"),
    ("/usr/sbin/visudo", "sudo"),
    ("/usr/bin/rsync", "rsync"),
    ("/usr/sbin/useradd", "passwd"),
    ("/usr/sbin/chpasswd", "passwd"),
    // The fleet's login shells (`/bin/bash` is always there).
    ("/bin/dash", "dash"),
    ("/bin/busybox", "busybox"),
    ("/usr/bin/zsh", "zsh"),
    ("/usr/bin/fish", "fish"),
    // The terminal tests read the screen of a real terminal emulator.
    ("/usr/bin/tmux", "tmux"),
    // The host-pattern tests compare with ClusterShell's own NodeSet (its Python library).
    ("/usr/bin/nodeset", "clustershell"),
    // `polyshell serve`'s pages are tested in a real headless browser, through WebDriver.
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
];

/// A policy-rc.d that stops package scripts from starting services (the system sshd must
/// not come up on port 22 as a side effect of installing `openssh-server`).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn ensure() -> Result<()> {
    let mut missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "the test fleet needs packages that are not installed: {list}\n\
             install them as root with:\n  apt-get update && apt-get install -y {list}\n\
             (the fleet also needs root to start sshd and create its test user)"
        );
    }
    eprintln!("xtask: installing {list}");
    let placed_policy = !Path::new(POLICY_RC_D).exists();
    if placed_policy {
        std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n")?;
        set_mode(POLICY_RC_D, 0o755)?;
    }
    let result = apt_install(&missing);
    if placed_policy {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    result?;
    if let Some((path, package)) = NEEDED.iter().find(|(path, _)| !Path::new(path).exists()) {
        bail!("{package} was installed but {path} is still missing");
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let update = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update})");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !install.success() {
        bail!("apt-get install {} failed ({install})", packages.join(" "));
    }
    Ok(())
}

pub fn set_mode(path: impl AsRef<Path>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.as_ref();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
