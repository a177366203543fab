//! The throwaway SSH test fleet: real `sshd` processes on loopback addresses, as varied as
//! real fleets are.
//!
//! Layout: site `siteNNN` listens on `127.77.X.Y:2222`; one sshd process serves at most 16
//! addresses (sshd's limit on `ListenAddress`). The bastion (`127.78.0.1`) and the proxied
//! site (`127.78.0.2`, reached with `ProxyJump bastion`) have an sshd each, the bastion's
//! logging at debug level so tests can see its forwarding. Then, each with an sshd of its own:
//! - `shell-dash`, `shell-bash`, `shell-busybox`, `shell-zsh`, `shell-fish` (`127.78.1.N`):
//!   a user per login shell, each with the same key, password and sudo rights;
//! - `stock-bastion` (`127.78.2.1`): OpenSSH's stock `MaxStartups 10:30:100` and
//!   `MaxSessions 10`; every `siteNNN` is also `jsiteNNN`, reached through it;
//! - `rsa-only` (`127.78.3.1`, only an RSA host key) and `default-kex` (`127.78.3.2`,
//!   OpenSSH's default key exchange list; the others pin curve25519 so every client in the
//!   bench does the same work). The login-shell sites and these two are recorded hashed in
//!   known_hosts, as Debian's `HashKnownHosts yes` writes them.
//!
//! With `--rtt MS`, every site is reached through the delay proxy (`proxy.rs`) on port 2200
//! of its address, which delivers each chunk `MS/2` later in each direction.

use crate::packages::set_mode;
use anyhow::{bail, Context, Result};
use polyshell_tests::{Fleet, FleetProcess, FleetSite, ShellSite};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const DEFAULT_SITES: usize = 8;
pub const MAX_SITES: usize = 2000;
const PORT: u16 = 2222;
/// Where the delay proxy listens in latency mode, on each site's address.
const PROXY_PORT: u16 = 2200;
const PER_PROCESS: usize = 16;
const USER: &str = "polytest";
/// The login-shell users are `polysh-SHELL`.
const SHELL_USER_PREFIX: &str = "polysh-";
/// Each login shell of the fleet, and where it may be installed.
const LOGIN_SHELLS: &[(&str, &[&str])] = &[
    ("dash", &["/bin/dash", "/usr/bin/dash"]),
    ("bash", &["/bin/bash", "/usr/bin/bash"]),
    ("busybox", &["/bin/busybox", "/usr/bin/busybox"]),
    ("zsh", &["/usr/bin/zsh", "/bin/zsh"]),
    ("fish", &["/usr/bin/fish", "/bin/fish"]),
];
const SUDOERS: &str = "/etc/sudoers.d/polyshell-fleet";
const SSHD: &str = "/usr/sbin/sshd";

/// Where the fleet lives: `$POLYSHELL_FLEET_DIR`, else `target/fleet` in the workspace.
pub fn dir() -> PathBuf {
    std::env::var_os("POLYSHELL_FLEET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target").join("fleet"))
}

pub fn file(dir: &Path) -> PathBuf {
    dir.join("fleet.json")
}

fn site_addr(index: usize) -> String {
    format!("127.77.{}.{}", index / 250, index % 250 + 1)
}

/// How a fleet is started.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub sites: usize,
    /// Round trip added by the delay proxy, in milliseconds (0: no proxy).
    pub rtt_ms: u64,
}

pub fn up(dir: &Path, opts: Options) -> Result<Fleet> {
    if !crate::packages::is_root() {
        bail!("the fleet needs root: it starts sshd and creates the test user {USER}");
    }
    if file(dir).exists() {
        eprintln!(
            "xtask: a fleet is already up in {}; taking it down first",
            dir.display()
        );
        down(dir)?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o755)?;
    std::fs::create_dir_all("/run/sshd")?; // sshd's privilege separation directory
    set_mode("/run/sshd", 0o755)?;

    let host_key = dir.join("host_ed25519");
    let identity = dir.join("id_ed25519");
    let ecdsa_identity = dir.join("id_ecdsa");
    keygen(&host_key, "ed25519", "polyshell-fleet-host")?;
    keygen(
        &dir.join("host_ecdsa"),
        "ecdsa",
        "polyshell-fleet-host-ecdsa",
    )?;
    keygen(&dir.join("host_rsa"), "rsa", "polyshell-fleet-host-rsa")?;
    keygen(&identity, "ed25519", "polyshell-fleet-client")?;
    keygen(&ecdsa_identity, "ecdsa", "polyshell-fleet-client-ecdsa")?;
    // Encrypted keys (authorised like the others) and a user certificate authority that
    // every sshd trusts (TrustedUserCAKeys): for the key and certificate tests.
    let key_passphrase = random_hex(12)?;
    let locked = dir.join("id_locked");
    let locked_ecdsa = dir.join("id_locked_ecdsa");
    keygen_with(
        &locked,
        "ed25519",
        "polyshell-fleet-locked",
        &key_passphrase,
    )?;
    keygen_with(
        &locked_ecdsa,
        "ecdsa",
        "polyshell-fleet-locked-ecdsa",
        &key_passphrase,
    )?;
    keygen(&dir.join("user_ca"), "ed25519", "polyshell-fleet-user-ca")?;
    let password = random_hex(12)?;
    let shells = login_shells(dir)?;
    let mut users = vec![(USER.to_owned(), PathBuf::from("/bin/bash"))];
    users.extend(
        shells
            .iter()
            .map(|(name, path)| (shell_user(name), path.clone())),
    );
    for (user, shell) in &users {
        setup_user(
            user,
            shell,
            &[&identity, &ecdsa_identity, &locked, &locked_ecdsa],
            &password,
        )?;
    }
    setup_sudo(&users)?;

    let secrets = Secrets {
        password: &password,
        key_passphrase: &key_passphrase,
    };
    let result = start(dir, opts, &shells, &host_key, &identity, secrets);
    if result.is_err() {
        // Leave nothing behind: a half-started fleet is taken down again.
        if let Err(err) = down(dir) {
            eprintln!("xtask: cleaning up the half-started fleet failed: {err:#}");
        }
    }
    result
}

/// The fleet's throwaway secrets: the test users' password and the encrypted keys' passphrase.
#[derive(Clone, Copy)]
struct Secrets<'a> {
    password: &'a str,
    key_passphrase: &'a str,
}

fn shell_user(shell: &str) -> String {
    format!("{SHELL_USER_PREFIX}{shell}")
}

/// The login shells to test and their paths. busybox becomes `sh` through a link named
/// `sh` (sshd runs the login shell as `basename -c COMMAND`, and busybox picks its applet
/// by that name).
fn login_shells(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for (name, candidates) in LOGIN_SHELLS {
        let Some(path) = candidates.iter().map(Path::new).find(|p| p.exists()) else {
            bail!("the login shell {name} is not installed (looked at {candidates:?})");
        };
        let path = if *name == "busybox" {
            let link_dir = dir.join("busybox");
            std::fs::create_dir_all(&link_dir)?;
            set_mode(&link_dir, 0o755)?;
            let link = link_dir.join("sh");
            std::os::unix::fs::symlink(path, &link)
                .with_context(|| format!("linking {}", link.display()))?;
            link
        } else {
            path.to_owned()
        };
        found.push((name.to_string(), path));
    }
    Ok(found)
}

/// What an sshd of the fleet is set up as.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Limits raised far above OpenSSH's (hundreds of clients connect at once), KEX pinned.
    Fleet,
    /// OpenSSH's stock limits, KEX pinned.
    StockLimits,
    /// Limits raised, OpenSSH's default KEX list.
    DefaultKex,
}

fn start(
    dir: &Path,
    opts: Options,
    shells: &[(String, PathBuf)],
    host_key: &Path,
    identity: &Path,
    secrets: Secrets,
) -> Result<Fleet> {
    let n = opts.sites;
    let penalties = supports_per_source_penalties(dir, host_key)?;
    let site = |name: String, addr: String, process: usize| FleetSite {
        name,
        addr,
        port: PORT,
        process,
        user: None,
    };
    let mut sites: Vec<FleetSite> = (0..n)
        .map(|i| site(format!("site{:03}", i + 1), site_addr(i), i / PER_PROCESS))
        .collect();
    let groups = n.div_ceil(PER_PROCESS);
    let bastion = site("bastion".into(), "127.78.0.1".into(), groups);
    let proxied = site("proxied".into(), "127.78.0.2".into(), groups + 1);
    let shell_sites: Vec<ShellSite> = shells
        .iter()
        .enumerate()
        .map(|(i, (name, path))| {
            let mut s = site(
                format!("shell-{name}"),
                format!("127.78.1.{}", i + 1),
                groups + 2,
            );
            s.user = Some(shell_user(name));
            ShellSite {
                site: s,
                shell: name.clone(),
                path: path.clone(),
                user: shell_user(name),
            }
        })
        .collect();
    let stock_bastion = site("stock-bastion".into(), "127.78.2.1".into(), groups + 3);
    let rsa_only = site("rsa-only".into(), "127.78.3.1".into(), groups + 4);
    let default_kex = site("default-kex".into(), "127.78.3.2".into(), groups + 5);

    let mut fleet = Fleet {
        dir: dir.to_path_buf(),
        user: USER.into(),
        password: secrets.password.into(),
        identity: identity.to_path_buf(),
        ecdsa_identity: dir.join("id_ecdsa"),
        locked_identity: dir.join("id_locked"),
        locked_ecdsa_identity: dir.join("id_locked_ecdsa"),
        key_passphrase: secrets.key_passphrase.into(),
        user_ca: dir.join("user_ca"),
        known_hosts: dir.join("known_hosts"),
        ssh_config: dir.join("ssh_config"),
        sites: Vec::new(),
        bastion,
        proxied,
        shells: shell_sites,
        stock_bastion,
        rsa_only,
        default_kex,
        rtt_ms: opts.rtt_ms,
        proxy: None,
        processes: Vec::new(),
        reaper: None,
    };
    // The proxied site also offers an ECDSA host key that known_hosts does not list: a test
    // records only that one, and the client must negotiate it rather than its preferred type.
    let host_ecdsa = dir.join("host_ecdsa");
    let host_rsa = dir.join("host_rsa");
    let ed25519_only = vec![host_key];
    type Group<'a> = (Vec<&'a FleetSite>, &'a str, Vec<&'a Path>, Kind);
    let mut plan: Vec<Group> = sites
        .chunks(PER_PROCESS)
        .map(|group| {
            (
                group.iter().collect(),
                "VERBOSE",
                ed25519_only.clone(),
                Kind::Fleet,
            )
        })
        .collect();
    plan.push((
        vec![&fleet.bastion],
        "DEBUG1",
        ed25519_only.clone(),
        Kind::Fleet,
    ));
    plan.push((
        vec![&fleet.proxied],
        "VERBOSE",
        vec![host_key, &host_ecdsa],
        Kind::Fleet,
    ));
    plan.push((
        fleet.shells.iter().map(|s| &s.site).collect(),
        "VERBOSE",
        ed25519_only.clone(),
        Kind::Fleet,
    ));
    // At debug level, like the other bastion: tests count its forwarded channels.
    plan.push((
        vec![&fleet.stock_bastion],
        "DEBUG1",
        ed25519_only.clone(),
        Kind::StockLimits,
    ));
    plan.push((
        vec![&fleet.rsa_only],
        "VERBOSE",
        vec![&host_rsa],
        Kind::Fleet,
    ));
    plan.push((
        vec![&fleet.default_kex],
        "VERBOSE",
        ed25519_only.clone(),
        Kind::DefaultKex,
    ));
    let mut configs = Vec::new();
    for (index, (group, log_level, host_keys, kind)) in plan.iter().enumerate() {
        let config = dir.join(format!("sshd-{index:03}.conf"));
        let log = dir.join(format!("sshd-{index:03}.log"));
        std::fs::write(
            &config,
            sshd_config(
                group,
                host_keys,
                &dir.join(format!("sshd-{index:03}.pid")),
                log_level,
                penalties,
                *kind,
            ) + &format!("TrustedUserCAKeys {}\n", dir.join("user_ca.pub").display()),
        )?;
        check_sshd_config(&config)?;
        configs.push((config, log));
    }
    spawn_under_reaper(&mut fleet, configs)?;
    fleet.sites = std::mem::take(&mut sites);
    wait_listening(&fleet)?;
    if opts.rtt_ms > 0 {
        crate::proxy::start(&mut fleet, PROXY_PORT)?;
        write_fleet(dir, &fleet)?;
        wait_listening(&fleet)?;
    }

    let pub_key = |path: &Path| -> Result<String> {
        let text = std::fs::read_to_string(path.with_extension("pub"))?;
        Ok(text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "))
    };
    let ed25519_pub = pub_key(host_key)?;
    let rsa_pub = pub_key(&host_rsa)?;
    let mut known_hosts = String::new();
    let mut to_hash = String::new();
    let mut ssh_config =
        String::from("# Generated by `cargo xtask fleet up`: every site of the test fleet.\n");
    let hashed: Vec<&str> = fleet
        .shells
        .iter()
        .map(|s| s.site.name.as_str())
        .chain([
            fleet.rsa_only.name.as_str(),
            fleet.default_kex.name.as_str(),
        ])
        .collect();
    for site in fleet.all_sites() {
        let key = if site.name == fleet.rsa_only.name {
            &rsa_pub
        } else {
            &ed25519_pub
        };
        let line = format!("[{}]:{} {key}\n", site.addr, site.port);
        if hashed.contains(&site.name.as_str()) {
            to_hash.push_str(&line);
        } else {
            known_hosts.push_str(&line);
        }
        writeln!(ssh_config, "Host {}\n  HostName {}", site.name, site.addr)?;
        if let Some(user) = &site.user {
            writeln!(ssh_config, "  User {user}")?;
        }
        if site.name == fleet.proxied.name {
            writeln!(ssh_config, "  ProxyJump {}", fleet.bastion.name)?;
        }
    }
    for site in &fleet.sites {
        writeln!(
            ssh_config,
            "Host {}\n  HostName {}\n  ProxyJump {}",
            fleet.via_stock_bastion(site),
            site.addr,
            fleet.stock_bastion.name
        )?;
    }
    let port = fleet.sites.first().map_or(PORT, |s| s.port);
    write!(
        ssh_config,
        "Host *\n  Port {port}\n  User {USER}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
         UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n",
        identity.display(),
        fleet.known_hosts.display()
    )?;
    known_hosts.push_str(&hash_known_hosts(dir, &to_hash)?);
    std::fs::write(&fleet.known_hosts, known_hosts)?;
    std::fs::write(&fleet.ssh_config, ssh_config)?;
    write_fleet(dir, &fleet)?;
    wait_settled(&fleet)?;
    Ok(fleet)
}

/// Waits until no sshd of the fleet has a child left: every readiness probe made an sshd
/// fork and re-exec itself, and at 2,000 sites those children keep both cores busy for
/// seconds after the last address answered. A run started then (a test, a benchmark, the
/// first `polyshell run`) met a machine that was not the fleet's, and lost sites to the
/// connect timeout.
fn wait_settled(fleet: &Fleet) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let table = process_table();
        let mut busy = Vec::new();
        for process in &fleet.processes {
            descendants(&table, process.pid, &mut busy);
        }
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the fleet's sshd still have {} children 60 s after start-up (readiness \
                 probes that do not end), e.g. pid {}",
                busy.len(),
                busy[0]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lines` of known_hosts with their host names hashed, by `ssh-keygen -H` itself.
fn hash_known_hosts(dir: &Path, lines: &str) -> Result<String> {
    let file = dir.join("known_hosts.to_hash");
    std::fs::write(&file, lines)?;
    run_checked(
        Command::new("ssh-keygen")
            .arg("-q")
            .arg("-H")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let hashed = std::fs::read_to_string(&file)?;
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(file.with_extension("to_hash.old"));
    if !hashed.lines().all(|l| l.starts_with("|1|")) {
        bail!("ssh-keygen -H left unhashed lines: {hashed}");
    }
    Ok(hashed)
}

fn write_fleet(dir: &Path, fleet: &Fleet) -> Result<()> {
    let path = file(dir);
    std::fs::write(&path, serde_json::to_string_pretty(fleet)?)?;
    // The file holds the test user's password: readable by root only.
    set_mode(&path, 0o600)
}

fn sshd_config(
    sites: &[&FleetSite],
    host_keys: &[&Path],
    pid_file: &Path,
    log_level: &str,
    penalties: bool,
    kind: Kind,
) -> String {
    let mut c = String::from("# Generated by `cargo xtask fleet up`.\n");
    for site in sites {
        let _ = writeln!(c, "ListenAddress {}:{PORT}", site.addr);
    }
    for key in host_keys {
        let _ = writeln!(c, "HostKey {}", key.display());
    }
    let _ = write!(c, "PidFile {}\nLogLevel {log_level}\n", pid_file.display());
    c.push_str(SSHD_COMMON);
    c.push_str(match kind {
        Kind::Fleet | Kind::DefaultKex => "MaxStartups 2000:30:4000\nMaxSessions 200\n",
        // What sshd_config(5) gives as the defaults, written out for whoever reads the file.
        Kind::StockLimits => "MaxStartups 10:30:100\nMaxSessions 10\n",
    });
    if kind != Kind::DefaultKex {
        c.push_str("KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n");
    }
    if penalties {
        // OpenSSH >= 9.8 would otherwise lock loopback out after the fault tests' failures.
        c.push_str("PerSourcePenalties no\n");
    }
    c
}

/// Settings shared by every fleet sshd. One KEX is pinned (but on `default-kex`) so every
/// client (ours and the peers in `cargo xtask bench`) does the same work per connection.
const SSHD_COMMON: &str = "\
AllowUsers polytest polysh-*
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
UseDNS no
PrintMotd no
StrictModes yes
LoginGraceTime 30
AllowTcpForwarding yes
Subsystem sftp internal-sftp
";

fn supports_per_source_penalties(dir: &Path, host_key: &Path) -> Result<bool> {
    let probe = dir.join("probe.conf");
    std::fs::write(
        &probe,
        format!("HostKey {}\nPerSourcePenalties no\n", host_key.display()),
    )?;
    let ok = Command::new(SSHD)
        .args(["-t", "-f"])
        .arg(&probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    std::fs::remove_file(&probe)?;
    Ok(ok)
}

fn check_sshd_config(config: &Path) -> Result<()> {
    let check = Command::new(SSHD).args(["-t", "-f"]).arg(config).output()?;
    if !check.status.success() {
        bail!(
            "sshd rejects {}: {}",
            config.display(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    Ok(())
}

/// Starts the fleet's reaper (this binary, `xtask fleet-reaper CONFIG LOG ...`), which starts
/// one sshd per config and reports their pids; records the reaper and the sshd processes in
/// the fleet file. The reaper is what makes the fleet's CPU time countable: OpenSSH's
/// per-connection monitor exits before its session child, which would otherwise be reaped by
/// pid 1, its CPU time lost to any measurement of the fleet.
fn spawn_under_reaper(fleet: &mut Fleet, configs: Vec<(PathBuf, PathBuf)>) -> Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("fleet-reaper");
    for (config, log) in &configs {
        cmd.arg(config).arg(log);
    }
    detached(&mut cmd, &fleet.dir.join("reaper.log"))?;
    let expected = configs.len();
    let mut reaper = cmd.spawn().context("starting the fleet's reaper")?;
    fleet.reaper = Some(reaper.id());
    let stdout = reaper.stdout.take().expect("piped stdout");
    for (line, (config, log)) in
        std::io::BufRead::lines(std::io::BufReader::new(stdout)).zip(configs)
    {
        let pid = line?.trim().parse().with_context(|| {
            format!(
                "the fleet's reaper reported no sshd pid (see {})",
                fleet.dir.join("reaper.log").display()
            )
        })?;
        fleet.processes.push(FleetProcess { pid, config, log });
        // Record as we go, so that a failure part-way still lets `down` stop what started.
        write_fleet(&fleet.dir, fleet)?;
    }
    write_fleet(&fleet.dir, fleet)?;
    if fleet.processes.len() != expected {
        bail!(
            "the fleet's reaper started {} of {expected} sshd processes",
            fleet.processes.len()
        );
    }
    Ok(())
}

/// Makes `cmd` a process of the fleet: in a session of its own (so it outlives xtask and a
/// Ctrl-C in the terminal cannot kill it half-way), no stdin, stdout piped for its report,
/// stderr to `log` (not xtask's stderr: a caller reading it through a pipe, as in
/// `cargo xtask fleet up | tail`, would otherwise wait for the fleet to go down).
pub fn detached(cmd: &mut Command, log: &Path) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(())
}

/// The reaper's body (`xtask fleet-reaper CONFIG LOG ...`): become a child subreaper, start
/// an sshd per config printing each pid, then reap every process that ends under the fleet
/// until none is left (after `fleet down`).
pub fn reaper(args: &[&str]) -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    {
        let mut out = std::io::stdout().lock();
        for pair in args.chunks(2) {
            let [config, log] = pair else {
                bail!("fleet-reaper: expected CONFIG LOG pairs");
            };
            let child = Command::new(SSHD)
                .args(["-D", "-f", config, "-E", log])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {SSHD}"))?;
            std::io::Write::write_fmt(&mut out, format_args!("{}\n", child.id()))?;
            std::io::Write::flush(&mut out)?;
        }
    }
    // Nothing more to report: the parent reads to end of file.
    // SAFETY: closing our own stdout; nothing writes to it afterwards.
    unsafe { libc::close(1) };
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child, with a valid status pointer.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => return Ok(()), // ECHILD: the fleet is gone
            }
        }
    }
}

fn wait_listening(fleet: &Fleet) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending: Vec<&FleetSite> = fleet.all_sites().collect();
    while !pending.is_empty() {
        pending.retain(|site| !answers(site));
        if pending.is_empty() {
            break;
        }
        for (i, process) in fleet.processes.iter().enumerate() {
            if !alive(process.pid) {
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                bail!(
                    "sshd #{i} (pid {}) exited during start-up; its log:\n{log}",
                    process.pid
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} sites do not listen after 20 s, e.g. {}",
                pending.len(),
                pending[0].addr
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The site's sshd answers (and, in latency mode, the proxy in front of it).
fn answers(site: &FleetSite) -> bool {
    let Ok(ip) = site.addr.parse() else {
        return false;
    };
    let ports: &[u16] = if site.port == PORT {
        &[PORT]
    } else {
        &[PORT, site.port]
    };
    ports.iter().all(|&port| {
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(200)).is_ok()
    })
}

pub fn down(dir: &Path) -> Result<()> {
    let path = file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("fleet down: no fleet is up in {}", dir.display());
            return Ok(());
        }
        Err(err) => return Err(err).context(format!("reading {}", path.display())),
    };
    let fleet: Fleet =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;

    let table = process_table();
    let mut victims = Vec::new();
    for process in &fleet.processes {
        // Only a pid that still runs our sshd with our config: pids get reused.
        if !cmdline(process.pid).contains(&process.config.display().to_string()) {
            continue;
        }
        victims.push(process.pid);
        descendants(&table, process.pid, &mut victims);
    }
    if let Some(proxy) = fleet.proxy {
        if cmdline(proxy).contains("fleet-proxy") {
            victims.push(proxy);
        }
    }
    if let Some(reaper) = fleet.reaper {
        if cmdline(reaper).contains("fleet-reaper") {
            // Whatever it adopted goes too; it would exit by itself once the sshds are gone.
            descendants(&table, reaper, &mut victims);
            victims.push(reaper);
        }
    }
    let users = test_users();
    for (_, uid) in &users {
        // Whatever a test user still runs was started through the fleet (e.g. a daemonized
        // test process): it goes too.
        victims.extend(table.iter().filter(|p| p.uid == *uid).map(|p| p.pid));
    }
    victims.sort_unstable();
    victims.dedup();
    terminate(&victims);
    let stopped = victims.len();

    let _ = std::fs::remove_file(SUDOERS);
    for (user, _) in &users {
        let status = Command::new("userdel")
            .args(["-r", "-f", user])
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            eprintln!("xtask: userdel {user} failed ({status})");
        }
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
    println!(
        "fleet down: stopped {stopped} processes, removed users {} and {}",
        names.join(", "),
        dir.display()
    );
    Ok(())
}

pub fn status(dir: &Path) -> Result<bool> {
    let path = file(dir);
    if !path.exists() {
        println!("fleet status: down (no {})", path.display());
        return Ok(false);
    }
    let fleet: Fleet = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let running = fleet.processes.iter().filter(|p| alive(p.pid)).count();
    let sites: Vec<&FleetSite> = fleet.all_sites().collect();
    let listening = sites.iter().filter(|s| answers(s)).count();
    println!("fleet status: {}", fleet.dir.display());
    println!(
        "  sshd processes running: {running}/{}",
        fleet.processes.len()
    );
    println!("  sites listening:        {listening}/{}", sites.len());
    println!(
        "  sites: {} .. {} ({}), bastion {} ({}), proxied {} via {}",
        fleet.sites.first().map(|s| s.name.as_str()).unwrap_or("-"),
        fleet.sites.last().map(|s| s.name.as_str()).unwrap_or("-"),
        fleet.sites.len(),
        fleet.bastion.name,
        fleet.bastion.addr,
        fleet.proxied.name,
        fleet.bastion.name
    );
    let shells: Vec<&str> = fleet.shells.iter().map(|s| s.site.name.as_str()).collect();
    println!("  login shells: {}", shells.join(", "));
    println!(
        "  stock-limits bastion {} (sites as jsiteNNN), {}, {}",
        fleet.stock_bastion.name, fleet.rsa_only.name, fleet.default_kex.name
    );
    let proxy_up = fleet.proxy.is_some_and(alive);
    match fleet.rtt_ms {
        0 => println!("  no latency (sites reached directly)"),
        ms => println!(
            "  {ms} ms round trip through the delay proxy (pid {}, {})",
            fleet.proxy.unwrap_or(0),
            if proxy_up { "running" } else { "NOT RUNNING" }
        ),
    }
    println!(
        "  users {}, ssh_config {}",
        fleet.users().collect::<Vec<_>>().join(", "),
        fleet.ssh_config.display()
    );
    Ok(running == fleet.processes.len()
        && listening == sites.len()
        && (fleet.rtt_ms == 0 || proxy_up))
}

fn keygen(path: &Path, kind: &str, comment: &str) -> Result<()> {
    keygen_with(path, kind, comment, "")
}

fn keygen_with(path: &Path, kind: &str, comment: &str, passphrase: &str) -> Result<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", comment, "-f"])
        .arg(path)
        .status()
        .context("running ssh-keygen")?;
    if !status.success() {
        bail!("ssh-keygen -f {} failed ({status})", path.display());
    }
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn setup_user(user: &str, shell: &Path, identities: &[&Path], password: &str) -> Result<()> {
    if user_uid(user).is_none() {
        run_checked(
            Command::new("useradd")
                .args(["-m", "-s"])
                .arg(shell)
                .arg(user),
        )?;
    } else {
        run_checked(Command::new("usermod").arg("-s").arg(shell).arg(user))?;
    }
    let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn()?;
    {
        use std::io::Write;
        let mut stdin = chpasswd.stdin.take().context("chpasswd stdin")?;
        writeln!(stdin, "{user}:{password}")?;
    }
    if !chpasswd.wait()?.success() {
        bail!("chpasswd failed for {user}");
    }
    let ssh_dir = PathBuf::from(format!("/home/{user}/.ssh"));
    std::fs::create_dir_all(&ssh_dir)?;
    let mut authorized = String::new();
    for identity in identities {
        authorized += &std::fs::read_to_string(identity.with_extension("pub"))?;
    }
    std::fs::write(ssh_dir.join("authorized_keys"), authorized)?;
    set_mode(&ssh_dir, 0o700)?;
    set_mode(ssh_dir.join("authorized_keys"), 0o600)?;
    run_checked(
        Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(&ssh_dir),
    )
}

fn setup_sudo(users: &[(String, PathBuf)]) -> Result<()> {
    // Every sudo asks: no timestamp reuse, so each sudo test really exercises the agent.
    let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
    let list = names.join(", ");
    let rules = format!(
        "# Written by `cargo xtask fleet up`; removed by `fleet down`.\n\
         User_Alias POLYSHELL_FLEET = {list}\n\
         Defaults:POLYSHELL_FLEET timestamp_timeout=0, lecture=never, !requiretty, passwd_tries=3\n\
         POLYSHELL_FLEET ALL=(ALL:ALL) ALL\n"
    );
    let staged = format!("{SUDOERS}.new");
    std::fs::create_dir_all("/etc/sudoers.d")?;
    std::fs::write(&staged, rules)?;
    set_mode(&staged, 0o440)?;
    let check = Command::new("visudo")
        .args(["-c", "-q", "-f", &staged])
        .status()?;
    if !check.success() {
        let _ = std::fs::remove_file(&staged);
        bail!("visudo rejects the fleet's sudoers rules");
    }
    std::fs::rename(&staged, SUDOERS)?;
    Ok(())
}

/// The fleet's test users that exist on this machine, with their uids.
fn test_users() -> Vec<(String, u32)> {
    let names = std::iter::once(USER.to_owned())
        .chain(LOGIN_SHELLS.iter().map(|(name, _)| shell_user(name)));
    names
        .filter_map(|name| user_uid(&name).map(|uid| (name, uid)))
        .collect()
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn user_uid(name: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

struct ProcInfo {
    pid: u32,
    ppid: u32,
    uid: u32,
}

fn process_table() -> Vec<ProcInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid = rest.split(' ').nth(1)?.parse().ok()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(ProcInfo { pid, ppid, uid })
        })
        .collect()
}

fn descendants(table: &[ProcInfo], pid: u32, out: &mut Vec<u32>) {
    let children: HashMap<u32, Vec<u32>> = table.iter().fold(HashMap::new(), |mut map, p| {
        map.entry(p.ppid).or_default().push(p.pid);
        map
    });
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for &child in children.get(&p).into_iter().flatten() {
            out.push(child);
            stack.push(child);
        }
    }
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited: it only waits to be reaped by its parent.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn terminate(pids: &[u32]) {
    signal_all(pids, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    signal_all(&left, libc::SIGKILL);
}

fn signal_all(pids: &[u32], signal: i32) {
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions; a vanished pid just gives ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}
