//! `cargo xtask bench`: polyshell against the fleet, side by side with the tools an operator
//! would otherwise use, in interleaved runs; medians with min/max. Writes
//! `target/bench/bench.md` and `bench.json`.

use crate::{fleet, packages};
use anyhow::{bail, Context, Result};
use polyshell_tests::Fleet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct Options {
    pub sites: usize,
    pub runs: usize,
    pub peers: bool,
    pub smoke: bool,
    /// Round trip added to every site by the fleet's delay proxy.
    pub rtt_ms: u64,
    /// Only these scenarios (of [`SCENARIOS`]).
    pub only: Option<Vec<String>>,
}

/// The scenarios, by the names `--only` takes.
pub const SCENARIOS: &[&str] = &[
    "fanout",
    "bastion",
    "batch",
    "held",
    "dead",
    "transfer",
    "persist",
    "scheduler",
];

impl Options {
    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == scenario))
    }
}

/// One measured run of a command.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
    server_cpu: f64,
    /// CPU seconds the whole machine was busy during the run (`/proc/stat`).
    machine_cpu: f64,
    /// Round trips through the fleet's delay proxy during the run (none at 0 ms).
    round_trips: Option<u64>,
    ok: bool,
}

struct Tool {
    name: String,
    /// Sites it reaches in a run (round trips are reported per site).
    sites: usize,
    /// argv; run with `sh -c` when it is one string with shell syntax.
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU seconds the fleet's sshd processes and their reaped children have used, including the
/// session processes OpenSSH leaves to the fleet's reaper.
fn server_cpu(fleet: &Fleet) -> f64 {
    // utime, stime, cutime, cstime are fields 14-17 of stat: 11-14 after the state.
    let stat_ticks = |pid: u32, fields: std::ops::Range<usize>| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        let Some(close) = stat.rfind(')') else {
            return 0;
        };
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        fields
            .filter_map(|i| rest.get(i)?.parse::<u64>().ok())
            .sum()
    };
    let listeners: u64 = fleet
        .processes
        .iter()
        .map(|p| stat_ticks(p.pid, 11..15))
        .sum();
    // The reaper's own time is nothing; its children's is the orphaned sessions'.
    let orphans = fleet.reaper.map_or(0, |pid| stat_ticks(pid, 13..15));
    (listeners + orphans) as f64 / clock_ticks()
}

/// CPU seconds this machine has been busy since boot (user, nice, system, irq, softirq).
fn machine_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0usize, 1, 2, 5, 6]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<u64>() as f64
        / clock_ticks()
}

/// Runs `tool` once, measuring wall time, its CPU (user+sys, children included), peak RSS,
/// and the fleet's sshd CPU meanwhile.
fn measure(tool: &Tool, fleet: &Fleet) -> Result<Sample> {
    let trips = || {
        fleet
            .proxy
            .and_then(|pid| crate::proxy::round_trips(pid, &fleet.dir))
    };
    let trips_before = trips();
    let before = server_cpu(fleet);
    let machine_before = machine_cpu();
    let started = Instant::now();
    let child = Command::new(&tool.argv[0])
        .args(&tool.argv[1..])
        .envs(tool.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", tool.argv[0]))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    let machine = machine_cpu() - machine_before;
    std::mem::forget(child); // reaped by wait4 above
    if waited != pid {
        bail!("waiting for {} failed", tool.name);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // The server side finishes a moment after the client: let it settle.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(Sample {
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        rss_kib: usage.ru_maxrss as u64,
        server_cpu: server_cpu(fleet) - before,
        machine_cpu: machine,
        round_trips: trips()
            .zip(trips_before)
            .map(|(after, before)| after - before),
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    })
}

fn median(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

struct Row {
    scenario: String,
    tool: String,
    /// Sites the tool reached in each run (for round trips per site).
    sites: usize,
    samples: Vec<Sample>,
}

impl Row {
    fn stat(&self, f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
        median(self.samples.iter().map(f).collect())
    }
    /// The median run's round trips through the delay proxy, per site (none at 0 ms).
    fn round_trips_per_site(&self) -> Option<f64> {
        let trips: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| s.round_trips)
            .map(|t| t as f64 / self.sites.max(1) as f64)
            .collect();
        (!trips.is_empty()).then(|| median(trips).0)
    }
    fn all_ok(&self) -> bool {
        self.samples.iter().all(|s| s.ok)
    }
}

fn sh(script: String) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script]
}

pub fn run(opts: Options) -> Result<()> {
    packages::ensure()?;
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The smoke run (CI's) only keeps the benchmark from rotting: it uses the dev build that
    // `cargo xtask test` has just made (the whole workspace, so that features unify the same
    // way and nothing recompiles; xtask is left out, as it is running) instead of a release
    // build of its own, minutes of CI time.
    let (profile, build): (&str, &[&str]) = if opts.smoke {
        (
            "debug",
            &[
                "build",
                "--workspace",
                "--exclude",
                "xtask",
                "--bins",
                "--examples",
            ],
        )
    } else {
        (
            "release",
            &[
                "build",
                "--release",
                "-p",
                "polyshell-cli",
                "-p",
                "polyshell-shell",
                "--bins",
                "--examples",
            ],
        )
    };
    let built = Command::new(&cargo)
        .current_dir(&root)
        .args(build)
        .status()?;
    if !built.success() {
        bail!("cargo {} failed", build.join(" "));
    }
    let bin_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join(profile);
    let polyshell = bin_dir.join("polyshell").display().to_string();
    let transfer = bin_dir.join("examples/transfer").display().to_string();
    let peers = if opts.peers {
        install_peers()?
    } else {
        Vec::new()
    };

    let dir = fleet::dir();
    let fleet = fleet::up(
        &dir,
        fleet::Options {
            sites: opts.sites,
            rtt_ms: opts.rtt_ms,
        },
    )?;
    let result = bench(&opts, &fleet, &polyshell, &transfer, &peers, &root);
    let downed = fleet::down(&dir);
    result?;
    downed
}

fn install_peers() -> Result<Vec<&'static str>> {
    let mut have = Vec::new();
    let wanted = [
        ("parallel-ssh", "pssh"),
        ("pdsh", "pdsh"),
        ("clush", "clustershell"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() && packages::is_root() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    for (bin, _) in wanted {
        if which(bin).is_some() {
            have.push(bin);
        }
    }
    if which("bssh").is_none() {
        eprintln!("xtask: installing bssh 2.2.3 (cargo install; this compiles for a while)");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let _ = Command::new(cargo)
            .args(["install", "--locked", "bssh@2.2.3"])
            .status();
    }
    if which("bssh").is_some() {
        have.push("bssh");
    }
    Ok(have)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// polyshell against the fleet, quietly: `polyshell --ssh-config CFG --output quiet ARGS...`.
fn polyshell_tool(name: &str, polyshell: &str, fleet: &Fleet, sites: usize, args: &[&str]) -> Tool {
    let mut argv: Vec<String> = [
        polyshell,
        "--ssh-config",
        &fleet.ssh_config.display().to_string(),
        "--output",
        "quiet",
    ]
    .map(String::from)
    .to_vec();
    argv.extend(args.iter().map(|a| a.to_string()));
    Tool {
        name: name.into(),
        sites,
        argv,
        // Runs are recorded, as an operator's are, in the fleet's directory (gone with it).
        env: vec![(
            "POLYSHELL_RUNS_DIR".into(),
            fleet.dir.join("runs").display().to_string(),
        )],
    }
}

/// The first `n` of the fleet's sites named `PREFIXnnn` as one pattern (past 999 the names
/// grow a digit: site999, site1000).
fn site_range(prefix: &str, n: usize) -> String {
    if n <= 999 {
        format!("{prefix}[001-{n:03}]")
    } else {
        format!("{prefix}[001-999],{prefix}[1000-{n}]")
    }
}

fn fanout_tools(fleet: &Fleet, polyshell: &str, n: usize, cmd: &str, peers: &[&str]) -> Vec<Tool> {
    let cfg = fleet.ssh_config.display().to_string();
    let range = site_range("site", n);
    let hosts: Vec<String> = fleet.sites.iter().take(n).map(|s| s.name.clone()).collect();
    let hosts_file = fleet.dir.join("bench-hosts");
    let _ = std::fs::write(&hosts_file, hosts.join("\n") + "\n");
    let mut tools = vec![polyshell_tool(
        "polyshell",
        polyshell,
        fleet,
        n,
        &["-H", &range, "run", "--", cmd],
    )];
    tools.push(Tool {
        name: "openssh (xargs -P)".into(),
        sites: n,
        argv: sh(format!(
            "xargs -P {n} -I{{}} ssh -F {cfg} {{}} {cmd:?} > /dev/null < {}",
            hosts_file.display()
        )),
        env: vec![],
    });
    for peer in peers {
        let argv = match *peer {
            "parallel-ssh" => sh(format!(
                "parallel-ssh -p {n} -t 0 -h {} -x '-F {cfg}' {cmd:?}",
                hosts_file.display()
            )),
            "pdsh" => sh(format!("pdsh -R ssh -f {n} -w '{range}' {cmd:?}")),
            "clush" => sh(format!("clush -f {n} -w '{range}' -o '-F {cfg}' {cmd:?}")),
            // bssh takes no IdentityFile from the config, and records host keys in
            // ~/.ssh/known_hosts: a HOME of its own keeps the operator's untouched.
            "bssh" => sh(format!(
                "mkdir -p {home}/.ssh && HOME={home} bssh -F {cfg} -i {} -H {} --parallel {n} {cmd:?}",
                fleet.identity.display(),
                hosts.join(","),
                home = fleet.dir.join("bssh-home").display()
            )),
            _ => continue,
        };
        let env = if *peer == "pdsh" {
            vec![("PDSH_SSH_ARGS_APPEND".into(), format!("-F {cfg}"))]
        } else {
            vec![]
        };
        tools.push(Tool {
            name: peer.to_string(),
            sites: n,
            argv,
            env,
        });
    }
    tools
}

fn bench(
    opts: &Options,
    fleet: &Fleet,
    polyshell: &str,
    transfer: &str,
    peers: &[&str],
    root: &Path,
) -> Result<()> {
    let n = opts.sites;
    let mut rows: Vec<Row> = Vec::new();
    // Each fan-out also as an operator runs it (no `--output quiet`): every site's line
    // printed (to /dev/null, as every tool's is), as a harness of someone else's runs it.
    let with_output = |mut tools: Vec<Tool>| {
        let mut shown = polyshell_tool("polyshell, default output", polyshell, fleet, n, &[]);
        shown.argv = tools[0]
            .argv
            .iter()
            .filter(|a| *a != "--output" && *a != "quiet")
            .cloned()
            .collect();
        tools.insert(1, shown);
        tools
    };
    let scenarios: Vec<(String, Vec<Tool>)> = vec![
        (
            format!("{n} sites `true`"),
            with_output(fanout_tools(fleet, polyshell, n, "true", peers)),
        ),
        (
            format!("{n} sites `echo hi`"),
            with_output(fanout_tools(fleet, polyshell, n, "echo hi", peers)),
        ),
    ];
    if opts.wants("fanout") {
        for (scenario, tools) in &scenarios {
            rows.extend(interleaved(scenario, tools, opts.runs, fleet)?);
        }
    }
    // 500 sites through one bastion with OpenSSH's stock limits (MaxStartups 10:30:100,
    // MaxSessions 10) vs the same sites direct: one connection to the bastion carries them.
    if opts.wants("bastion") {
        let tool = |name: &str, prefix: &str| {
            let range = site_range(prefix, n);
            polyshell_tool(
                name,
                polyshell,
                fleet,
                n,
                &["-H", &range, "run", "--", "true"],
            )
        };
        let tools = [
            tool("polyshell, direct", "site"),
            tool("polyshell, through the stock-limits bastion", "jsite"),
        ];
        rows.extend(interleaved(
            &format!("{n} sites `true`, bastion"),
            &tools,
            opts.runs,
            fleet,
        )?);
    }
    if opts.wants("persist") {
        rows.extend(kept_connections(opts, fleet, polyshell)?);
    }

    // A 4-job batch on up to 100 sites vs one job, and vs 4 invocations of a peer.
    let batch_sites = n.min(100);
    let polyfile = fleet.dir.join("bench.toml");
    std::fs::write(
        &polyfile,
        format!(
            "[sites.\"site[001-{batch_sites:03}]\"]\nroles = [\"b\"]\nhost = \"{{name}}\"\n\n\
             [[jobs.j1]]\nroles = [\"b\"]\nrun = \"true\"\n[[jobs.j2]]\nroles = [\"b\"]\nrun = \"true\"\n\
             [[jobs.j3]]\nroles = [\"b\"]\nrun = \"true\"\n[[jobs.j4]]\nroles = [\"b\"]\nrun = \"true\"\n\n\
             [schedules.one]\njobs = [\"j1\"]\n[schedules.four]\njobs = [\"j1\", \"j2\", \"j3\", \"j4\"]\n"
        ),
    )?;
    let cfg = fleet.ssh_config.display().to_string();
    let pf = polyfile.display().to_string();
    let batch_tools = vec![
        polyshell_tool(
            "polyshell, 1 job",
            polyshell,
            fleet,
            batch_sites,
            &["-f", &pf, "schedule", "one"],
        ),
        polyshell_tool(
            "polyshell, 4 jobs site-sequential",
            polyshell,
            fleet,
            batch_sites,
            &["-f", &pf, "schedule", "four"],
        ),
    ];
    let mut peer_four: Vec<Tool> = fanout_tools(fleet, polyshell, batch_sites, "true", peers)
        .into_iter()
        .skip(1)
        .map(|t| Tool {
            name: format!("{}, 4 invocations", t.name),
            sites: t.sites,
            argv: sh(format!(
                "for i in 1 2 3 4; do {} || exit 1; done",
                shell_join(&t.argv)
            )),
            env: t.env,
        })
        .collect();
    let mut tools = batch_tools;
    tools.append(&mut peer_four);
    let scenario = format!("batch of 4 jobs, {batch_sites} sites");
    if opts.wants("batch") {
        rows.extend(interleaved(&scenario, &tools, opts.runs, fleet)?);
    }

    // Memory per connected site: every site holds its connection (and one channel) open for
    // two seconds; the peak RSS difference between n and 100 sites, per additional site.
    let held = if n > 100 { vec![100, n] } else { vec![n] };
    let held_tools: Vec<Tool> = held
        .iter()
        .map(|&k| {
            let mut tool = fanout_tools(fleet, polyshell, k, "sleep 2", &[]).remove(0);
            tool.name = format!("polyshell, {k} sites");
            tool
        })
        .collect();
    let held_rows = if opts.wants("held") {
        interleaved(
            "connections held open (`sleep 2`)",
            &held_tools,
            opts.runs,
            fleet,
        )?
    } else {
        Vec::new()
    };
    let per_site_kib = match held_rows.as_slice() {
        [few, many] => {
            let rss = |r: &Row| r.stat(|s| s.rss_kib as f64).0;
            Some((rss(many) - rss(few)) / (n - 100) as f64)
        }
        _ => None,
    };
    rows.extend(held_rows);

    // Dead sites: 10 of 100 accept TCP and never answer; the run must end at the connect
    // timeout, not hang.
    let dead_listeners: Vec<std::net::TcpListener> = (0..10)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let live = n.min(100).saturating_sub(10).max(1);
    let mut dead_pf = format!("[sites.\"site[001-{live:03}]\"]\nhost = \"{{name}}\"\n");
    for (i, l) in dead_listeners.iter().enumerate() {
        writeln!(
            dead_pf,
            "[sites.dead{i}]\nhost = \"127.0.0.1\"\nport = {}",
            l.local_addr()?.port()
        )?;
    }
    let dead_file = fleet.dir.join("bench-dead.toml");
    std::fs::write(&dead_file, dead_pf)?;
    let dead_tool = polyshell_tool(
        "polyshell, --connect-timeout 5",
        polyshell,
        fleet,
        live + 10,
        &[
            "--connect-timeout",
            "5",
            "-f",
            &dead_file.display().to_string(),
            "run",
            "--on",
            "all",
            "--",
            "true",
        ],
    );
    let mut dead_samples = Vec::new();
    for _ in 0..if opts.wants("dead") { opts.runs } else { 0 } {
        let mut sample = measure(&dead_tool, fleet)?;
        sample.ok = !sample.ok; // the dead sites must fail the run (exit 1)
        dead_samples.push(sample);
    }
    if !dead_samples.is_empty() {
        rows.push(Row {
            scenario: format!("{live} live + 10 silent sites"),
            tool: dead_tool.name.clone(),
            sites: dead_tool.sites,
            samples: dead_samples,
        });
    }
    drop(dead_listeners);

    // File transfer (a stream on the site's connection): one file up and down, vs scp.
    let size_mb = if opts.smoke { 5 } else { 200 };
    let file = fleet.dir.join("bench.bin");
    let status = Command::new("head")
        .args(["-c", &format!("{}", size_mb * 1_000_000), "/dev/urandom"])
        .stdout(std::fs::File::create(&file)?)
        .status()?;
    if !status.success() {
        bail!("making the transfer file failed");
    }
    let f = file.display().to_string();
    let mut transfer_lines = Vec::new();
    for _ in 0..if opts.wants("transfer") { opts.runs } else { 0 } {
        let out = Command::new(transfer)
            .args([&cfg, "site001", &f])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let times: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let t0 = Instant::now();
        let up = Command::new("scp")
            .args(["-q", "-F", &cfg, &f, "site001:bench-scp.bin"])
            .status()?;
        let scp_up = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let down = Command::new("scp")
            .args([
                "-q",
                "-F",
                &cfg,
                "site001:bench-scp.bin",
                &format!("{f}.scp"),
            ])
            .status()?;
        let scp_down = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(format!("{f}.scp"));
        if times.len() == 2 && up.success() && down.success() {
            transfer_lines.push((times[0], times[1], scp_up, scp_down));
        }
    }
    let _ = std::fs::remove_file(&file);

    let scheduler = if opts.smoke || !opts.wants("scheduler") {
        None
    } else {
        scheduler_overhead(root)
    };
    report(
        opts,
        &rows,
        &transfer_lines,
        size_mb,
        scheduler,
        per_site_kib,
        root,
    )
}

/// `--persist`: the first run (starting the keeper, connecting every site) and the second
/// (on the kept connections), `runs` rounds, the keeper closed before each round. The
/// keeper's CPU during a run counts as the run's client CPU (it works for the client).
fn kept_connections(opts: &Options, fleet: &Fleet, polyshell: &str) -> Result<Vec<Row>> {
    let n = opts.sites;
    let keeper_dir = fleet.dir.join("keeper");
    let mut tool = fanout_tools(fleet, polyshell, n, "true", &[]).remove(0);
    tool.argv
        .splice(1..1, ["--persist".to_owned(), "10m".to_owned()]);
    tool.env.push((
        "POLYSHELL_KEEPER_DIR".into(),
        keeper_dir.display().to_string(),
    ));
    let keeper_pid = || -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(keeper_dir.join("keeper.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        std::path::Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some(pid)
    };
    let keeper_cpu = |pid: Option<u32>| -> f64 {
        let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        else {
            return 0.0;
        };
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 2..]
            .split(' ')
            .collect();
        (11..13)
            .filter_map(|i| rest.get(i)?.parse::<u64>().ok())
            .sum::<u64>() as f64
            / clock_ticks()
    };
    let close = || -> Result<()> {
        Command::new(polyshell)
            .arg("connections")
            .arg("close")
            .env("POLYSHELL_KEEPER_DIR", &keeper_dir)
            .stdout(Stdio::null())
            .status()?;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while keeper_pid().is_some() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    };
    // The kept connections' sshd processes live on after the run, so their CPU is not yet
    // in their listeners' counts: the server side is the machine's busy time less the client's.
    let server_side = |mut sample: Sample| {
        sample.server_cpu = (sample.machine_cpu - sample.cpu).max(0.0);
        sample
    };
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        close()?;
        let mut sample = measure(&tool, fleet)?;
        // The keeper started during the run: all its CPU so far is this run's.
        sample.cpu += keeper_cpu(keeper_pid());
        first.push(server_side(sample));
        let pid = keeper_pid();
        let before = keeper_cpu(pid);
        let mut sample = measure(&tool, fleet)?;
        sample.cpu += keeper_cpu(pid) - before;
        second.push(server_side(sample));
    }
    close()?;

    // What Ansible and pssh users do: OpenSSH's ControlMaster with ControlPersist.
    let masters = fleet.dir.join("bench-cm");
    std::fs::create_dir_all(&masters)?;
    let cfg = fleet.ssh_config.display().to_string();
    let hosts_file = fleet.dir.join("bench-hosts");
    let openssh = Tool {
        name: "openssh ControlPersist (xargs -P)".into(),
        sites: n,
        argv: sh(format!(
            "xargs -P {n} -I{{}} ssh -F {cfg} -o ControlMaster=auto -o ControlPersist=10m \
             -o ControlPath={}/%C {{}} true > /dev/null < {}",
            masters.display(),
            hosts_file.display()
        )),
        env: vec![],
    };
    let close_masters = || {
        let _ = Command::new("pkill")
            // A master renames itself `ssh: PATH [mux]`.
            .args(["-f", &masters.display().to_string()])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let (mut cm_first, mut cm_second) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        close_masters();
        cm_first.push(server_side(measure(&openssh, fleet)?));
        cm_second.push(server_side(measure(&openssh, fleet)?));
    }
    close_masters();

    let scenario = format!("{n} sites `true`, kept connections");
    let row = |tool: &str, samples| Row {
        scenario: scenario.clone(),
        tool: tool.into(),
        sites: n,
        samples,
    };
    Ok(vec![
        row(
            "polyshell --persist, first run (starts the keeper, connects)",
            first,
        ),
        row("polyshell --persist, second run", second),
        row("openssh ControlPersist (xargs -P), first run", cm_first),
        row("openssh ControlPersist (xargs -P), second run", cm_second),
    ])
}

/// Runs every tool once per round, `runs` rounds: no tool always goes first or last.
fn interleaved(scenario: &str, tools: &[Tool], runs: usize, fleet: &Fleet) -> Result<Vec<Row>> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
    for _ in 0..runs {
        for (i, tool) in tools.iter().enumerate() {
            samples[i].push(measure(tool, fleet)?);
        }
    }
    Ok(tools
        .iter()
        .zip(samples)
        .map(|(tool, samples)| Row {
            scenario: scenario.to_owned(),
            tool: tool.name.clone(),
            sites: tool.sites,
            samples,
        })
        .collect())
}

fn shell_join(argv: &[String]) -> String {
    if argv.len() == 3 && argv[0] == "sh" && argv[1] == "-c" {
        return argv[2].clone();
    }
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the criterion scheduler benchmark; the median time per 100,000 actions.
fn scheduler_overhead(root: &Path) -> Option<f64> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "bench",
            "-p",
            "polyshell-sched",
            "--bench",
            "overhead",
            "--",
            "--noplot",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("time:"))?;
    let inner = line.split('[').nth(1)?.split(']').next()?;
    let parts: Vec<&str> = inner.split_whitespace().collect();
    let (value, unit) = (parts.get(2)?.parse::<f64>().ok()?, *parts.get(3)?);
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        _ => return None,
    };
    Some(secs / 100_000.0 * 1e6)
}

fn report(
    opts: &Options,
    rows: &[Row],
    transfers: &[(f64, f64, f64, f64)],
    size_mb: usize,
    scheduler_us: Option<f64>,
    per_site_kib: Option<f64>,
    root: &Path,
) -> Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2) as f64;
    let mut md = String::new();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    writeln!(
        md,
        "Machine: {} cores ({cpu_model}), fleet of {} sshd sites on loopback{}, one KEX (curve25519-sha256). \
         {} interleaved run(s) each; median (min-max).\n",
        cores,
        opts.sites,
        if opts.rtt_ms > 0 {
            format!(", {} ms of round trip added to each by the fleet's delay proxy", opts.rtt_ms)
        } else {
            String::new()
        },
        opts.runs
    )?;
    writeln!(md, "| scenario | tool | wall s | client CPU s | peak RSS MB | sshd CPU s | floor s | wall/floor | round trips per site | ok |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    let mut json_rows = Vec::new();
    for r in rows {
        let (wall, wmin, wmax) = r.stat(|s| s.wall);
        let (cpu, _, _) = r.stat(|s| s.cpu);
        let (rss, _, _) = r.stat(|s| s.rss_kib as f64 / 1024.0);
        let (server, _, _) = r.stat(|s| s.server_cpu);
        let floor = (server + cpu) / cores;
        let trips = r.round_trips_per_site();
        writeln!(
            md,
            "| {} | {} | {wall:.2} ({wmin:.2}-{wmax:.2}) | {cpu:.2} | {rss:.1} | {server:.2} | {floor:.2} | {:.2} | {} | {} |",
            r.scenario,
            r.tool,
            wall / floor,
            trips.map_or("-".into(), |t| format!("{t:.1}")),
            if r.all_ok() { "yes" } else { "NO" }
        )?;
        json_rows.push(serde_json::json!({
            "scenario": r.scenario, "tool": r.tool, "wall": wall, "wall_min": wmin, "wall_max": wmax,
            "client_cpu": cpu, "peak_rss_mb": rss, "server_cpu": server, "floor": floor,
            "round_trips_per_site": trips, "ok": r.all_ok(),
        }));
    }
    if !transfers.is_empty() {
        let up = median(transfers.iter().map(|s| s.0).collect()).0;
        let down = median(transfers.iter().map(|s| s.1).collect()).0;
        let scp_up = median(transfers.iter().map(|s| s.2).collect()).0;
        let scp_down = median(transfers.iter().map(|s| s.3).collect()).0;
        writeln!(
            md,
            "\n| transfer of {size_mb} MB | polyshell s | scp s | throughput ratio |"
        )?;
        writeln!(md, "|---|---|---|---|")?;
        writeln!(
            md,
            "| upload | {up:.2} | {scp_up:.2} | {:.2} |",
            scp_up / up
        )?;
        writeln!(
            md,
            "| download | {down:.2} | {scp_down:.2} | {:.2} |",
            scp_down / down
        )?;
        json_rows.push(serde_json::json!({"scenario": "sftp", "size_mb": size_mb, "upload": up, "download": down, "scp_upload": scp_up, "scp_download": scp_down}));
    }
    if let Some(kib) = per_site_kib {
        writeln!(
            md,
            "\nMemory per additional connected site (peak RSS, {} sites vs 100, connections held open): {kib:.0} KiB.",
            opts.sites
        )?;
        json_rows.push(serde_json::json!({"scenario": "memory_per_site", "kib": kib}));
    }
    if let Some(us) = scheduler_us {
        writeln!(md, "\nScheduler overhead (criterion, 1,000 sites x 100 no-op jobs): {us:.2} µs per action.")?;
        json_rows.push(serde_json::json!({"scenario": "scheduler", "us_per_action": us}));
    }
    let out = root.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("bench.md"), &md)?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&json_rows)?,
    )?;
    println!("{md}");
    println!("written to {}", out.display());
    Ok(())
}
