//! Shared pieces of Polyshell's integration tests: the description of the SSH test fleet that
//! `cargo xtask fleet up` writes and the fleet tests read.
//!
//! The fleet is a set of real OpenSSH `sshd` processes on loopback addresses, a throwaway
//! client key, a test user whose `sudo` asks for a password every time, a `known_hosts` and an
//! `ssh_config` naming every site, and one site reached only through a bastion (ProxyJump).
//!
//! ```no_run
//! let fleet = polyshell_tests::Fleet::load();
//! println!("{} sites, first at {}", fleet.sites.len(), fleet.sites[0].addr);
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The environment variable naming the fleet file; `cargo xtask test` sets it.
pub const FLEET_ENV: &str = "POLYSHELL_FLEET";

/// Why a fleet test is ignored under plain `cargo test`.
pub const NEEDS_FLEET: &str = "needs the SSH test fleet: run `cargo xtask test`";

/// Everything a test needs to reach the fleet; written as `fleet.json` in the fleet directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fleet {
    /// Directory holding keys, configs, logs and this file.
    pub dir: PathBuf,
    /// The test user every site logs in as.
    pub user: String,
    /// The test user's password, which `sudo` asks for (throwaway, random per fleet).
    pub password: String,
    /// Private ed25519 client key authorised for `user` on every site.
    pub identity: PathBuf,
    /// A second authorised key, ECDSA: polyshell hands it to libssh2 rather than signing with
    /// it in process (see `polyshell-shell`'s `ssh/keys.rs`).
    #[serde(default)]
    pub ecdsa_identity: PathBuf,
    /// known_hosts with the key of every site.
    pub known_hosts: PathBuf,
    /// ssh_config naming every site (`Host site001` ...), the bastion and the proxied site.
    pub ssh_config: PathBuf,
    /// The ordinary sites, in order.
    pub sites: Vec<FleetSite>,
    /// The bastion: an ordinary site whose sshd logs forwarding at debug level.
    pub bastion: FleetSite,
    /// A site the ssh_config reaches through the bastion (`ProxyJump bastion`). Its sshd also
    /// has an ECDSA host key (`host_ecdsa` in `dir`) that known_hosts does not list.
    pub proxied: FleetSite,
    /// The sshd processes `fleet up` started.
    pub processes: Vec<FleetProcess>,
    /// The fleet's reaper: the parent of every sshd, and a child subreaper, so that the
    /// session processes sshd orphans are reaped (and their CPU time counted) there rather
    /// than by pid 1. `None` for a fleet file written before there was one.
    #[serde(default)]
    pub reaper: Option<u32>,
}

/// One site of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSite {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// Index into [`Fleet::processes`] of the sshd serving this site.
    pub process: usize,
}

/// One sshd process of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetProcess {
    pub pid: u32,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Fleet {
    /// Where the fleet file is: `$POLYSHELL_FLEET`, else `target/fleet/fleet.json`.
    pub fn path() -> PathBuf {
        match std::env::var_os(FLEET_ENV) {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("fleet")
                .join("fleet.json"),
        }
    }

    /// Reads the fleet file, or panics with how to bring the fleet up: a fleet test that
    /// cannot find its fleet fails, it never passes silently.
    pub fn load() -> Fleet {
        let path = Self::path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "the SSH test fleet is not up ({}: {err}).\n\
                 Run the fleet tests with `cargo xtask test`, or start a fleet with \
                 `cargo xtask fleet up` and set {FLEET_ENV} to its fleet.json",
                path.display()
            )
        });
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{}: not a fleet file: {err}", path.display()))
    }

    /// The site called `name` (ordinary, bastion or proxied).
    pub fn site(&self, name: &str) -> &FleetSite {
        self.all_sites()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("the fleet has no site {name}"))
    }

    /// Every site: the ordinary ones, then the bastion and the proxied site.
    pub fn all_sites(&self) -> impl Iterator<Item = &FleetSite> {
        self.sites.iter().chain([&self.bastion, &self.proxied])
    }

    /// The log file of the sshd serving `site`.
    pub fn log_of(&self, site: &FleetSite) -> &Path {
        &self.processes[site.process].log
    }
}
