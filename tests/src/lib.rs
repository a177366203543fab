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
    /// Two encrypted keys (ed25519 and ECDSA), authorised like the others; their passphrase
    /// is [`Fleet::key_passphrase`].
    #[serde(default)]
    pub locked_identity: PathBuf,
    #[serde(default)]
    pub locked_ecdsa_identity: PathBuf,
    /// The passphrase of the encrypted keys (throwaway, random per fleet).
    #[serde(default)]
    pub key_passphrase: String,
    /// A user certificate authority's private key (unencrypted), which every sshd trusts
    /// (`TrustedUserCAKeys`): a key it signs for `user` logs in without being authorised.
    #[serde(default)]
    pub user_ca: PathBuf,
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
    /// One site per login shell (`shell-dash`, `shell-bash`, `shell-busybox`, `shell-zsh`,
    /// `shell-fish`), each logging in as a user of its own whose login shell that is. Their
    /// known_hosts entries are hashed (`HashKnownHosts yes`, Debian's client default).
    pub shells: Vec<ShellSite>,
    /// A bastion with OpenSSH's stock limits (`MaxStartups 10:30:100`, `MaxSessions 10`).
    /// Every ordinary site `siteNNN` is also reachable through it as `jsiteNNN`.
    pub stock_bastion: FleetSite,
    /// A host whose sshd has only an RSA host key (known_hosts lists only that, hashed).
    pub rsa_only: FleetSite,
    /// A host whose sshd offers OpenSSH's default key exchange list (the others pin one).
    pub default_kex: FleetSite,
    /// The round trip the delay proxy adds to every connection, in milliseconds (0: none,
    /// the sites are reached directly).
    pub rtt_ms: u64,
    /// The delay proxy's pid, when `rtt_ms` > 0.
    pub proxy: Option<u32>,
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
    /// The ssh_config alias.
    pub name: String,
    /// Where clients connect (the delay proxy's address in latency mode).
    pub addr: String,
    pub port: u16,
    /// Index into [`Fleet::processes`] of the sshd serving this site.
    pub process: usize,
    /// The user the ssh_config logs in as (`None`: the fleet's [`Fleet::user`]).
    #[serde(default)]
    pub user: Option<String>,
}

/// A site whose user has a particular login shell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShellSite {
    pub site: FleetSite,
    /// `dash`, `bash`, `busybox`, `zsh` or `fish`.
    pub shell: String,
    /// The login shell's path as `/etc/passwd` has it.
    pub path: PathBuf,
    /// The user logging in (also [`FleetSite::user`]).
    pub user: String,
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

    /// Every site: the ordinary ones, the bastion and the proxied site, the login-shell
    /// sites, the stock bastion, the RSA-only and the default-KEX hosts.
    pub fn all_sites(&self) -> impl Iterator<Item = &FleetSite> {
        self.sites
            .iter()
            .chain([&self.bastion, &self.proxied])
            .chain(self.shells.iter().map(|s| &s.site))
            .chain([&self.stock_bastion, &self.rsa_only, &self.default_kex])
    }

    /// The ssh_config alias reaching ordinary site `site` through the stock bastion.
    pub fn via_stock_bastion(&self, site: &FleetSite) -> String {
        format!("j{}", site.name)
    }

    /// The user `site` logs in as.
    pub fn user_of<'a>(&'a self, site: &'a FleetSite) -> &'a str {
        site.user.as_deref().unwrap_or(&self.user)
    }

    /// Every test user of the fleet: the main one and one per login shell.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.user.as_str()).chain(self.shells.iter().map(|s| s.user.as_str()))
    }

    /// The log file of the sshd serving `site`.
    pub fn log_of(&self, site: &FleetSite) -> &Path {
        &self.processes[site.process].log
    }

    /// An ssh_config for the whole fleet, written in `dir`, that offers only `key` and never
    /// asks ssh-agent (`IdentityAgent none`): the fleet's own with its IdentityFile replaced.
    pub fn ssh_config_with_key(&self, dir: &Path, key: &Path) -> PathBuf {
        let text = std::fs::read_to_string(&self.ssh_config).unwrap();
        let wanted = format!("IdentityFile {}", self.identity.display());
        assert!(text.contains(&wanted), "the fleet's ssh_config changed");
        let text = text.replace(
            &wanted,
            &format!("IdentityFile {}\n  IdentityAgent none", key.display()),
        );
        let name = key.file_name().unwrap().to_string_lossy();
        let path = dir.join(format!("ssh_config-{name}"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// How many processes on this machine (the fleet is local) match `pattern` (`pgrep -f`).
pub fn count_processes(pattern: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-c", "-f", pattern])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Whether `check` holds within `secs` seconds (looked at every 100 ms).
pub fn wait_for(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    check()
}

/// An sshd of a test's own on `ADDR:2222`, configured like the fleet's (its keys, users and
/// limits), that the test may kill, stop or restart; killed with everything under it when
/// dropped.
pub struct OwnSshd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// A known_hosts file of its own (empty at the start: use accept-new).
    pub known_hosts: PathBuf,
    /// Where it logs (`-E`): `Accepted publickey` lines count its logins.
    pub log: PathBuf,
}

impl OwnSshd {
    /// Starts it on `addr` (a loopback address no fleet site uses, e.g. `127.79.0.1`).
    pub fn start(fleet: &Fleet, addr: &str) -> OwnSshd {
        OwnSshd::start_with(fleet, addr, "")
    }

    /// Starts it with `settings` (sshd_config lines) in place of the fleet's for the same
    /// keywords, e.g. `MaxSessions 1`.
    pub fn start_with(fleet: &Fleet, addr: &str, settings: &str) -> OwnSshd {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let template =
            std::fs::read_to_string(&fleet.processes[0].config).expect("the fleet's sshd config");
        let keyword = |l: &str| l.split_whitespace().next().unwrap_or("").to_lowercase();
        let replaced: Vec<String> = settings.lines().map(keyword).collect();
        let config: String = template
            .lines()
            .filter(|l| !l.starts_with("ListenAddress") && !l.starts_with("PidFile"))
            .filter(|l| !replaced.contains(&keyword(l)))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + &format!(
                "{settings}\nListenAddress {addr}:2222\nPidFile {}\n",
                dir.path().join("pid").display()
            );
        let cfg = dir.path().join("sshd_config");
        std::fs::write(&cfg, config).expect("write sshd_config");
        let log = dir.path().join("sshd.log");
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(&cfg)
            .arg("-E")
            .arg(&log)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start /usr/sbin/sshd");
        assert!(
            wait_for(10, || std::net::TcpStream::connect((addr, 2222)).is_ok()),
            "own sshd on {addr} did not start"
        );
        let known_hosts = dir.path().join("known_hosts");
        OwnSshd {
            child,
            _dir: dir,
            known_hosts,
            log,
        }
    }

    /// How many logins its log shows.
    pub fn logins(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
    }

    /// The listener and every process under it.
    pub fn tree(&self) -> Vec<i32> {
        let mut pids = vec![self.child.id() as i32];
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                    continue;
                };
                if rest.split(' ').nth(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
                    pids.push(pid);
                }
            }
            i += 1;
        }
        pids
    }

    /// Sends `signal` to the listener and every process under it.
    pub fn signal_all(&self, signal: i32) {
        for pid in self.tree() {
            // SAFETY: signalling processes this test started.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

impl Drop for OwnSshd {
    fn drop(&mut self) {
        self.signal_all(libc::SIGCONT);
        self.signal_all(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `s` as a TOML basic string (for Polyfiles the tests write).
pub fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
