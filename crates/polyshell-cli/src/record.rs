//! The CLI's side of the run ledger: where it is and how much it keeps (environment), what a
//! run's header holds, `polyshell runs [show ID|last]`, and what `rerun` needs from a record.

use crate::exit::CliError;
use crate::report::{LockWait, OutputMode, Reporter, Summary, Terminal};
use polyshell_auth::{Console, ConsoleStream};
use polyshell_sched::ledger::{Ledger, Retention, RunRecord};
use polyshell_sched::{Event, EventSink};
use polyshell_sites::range;
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Neither `POLYSHELL_RUNS_DIR`, `XDG_STATE_HOME` nor `HOME` is set.
pub const NO_PLACE: &str =
    "no place for the run ledger: set HOME, XDG_STATE_HOME or POLYSHELL_RUNS_DIR";

/// The ledger, from the environment: `POLYSHELL_RUNS_DIR` (else `$XDG_STATE_HOME/polyshell/runs`,
/// else `~/.local/state/polyshell/runs`), `POLYSHELL_RUNS_KEEP` (runs, default 200),
/// `POLYSHELL_RUNS_MAX_AGE` (a duration, default 30d), `POLYSHELL_RUNS_OUTPUT_CAP` (bytes
/// per run, `K`/`M`/`G` suffixes, default 16M). A bad value is a usage error naming it.
pub fn ledger() -> Result<Ledger, CliError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let bad =
        |name: &str, value: &str, why: String| CliError::usage(format!("{name}={value}: {why}"));
    let mut retention = Retention::default();
    if let Some(v) = var("POLYSHELL_RUNS_KEEP") {
        retention.keep =
            crate::values::positive(&v).map_err(|e| bad("POLYSHELL_RUNS_KEEP", &v, e))?;
    }
    if let Some(v) = var("POLYSHELL_RUNS_MAX_AGE") {
        retention.max_age =
            crate::values::duration(&v).map_err(|e| bad("POLYSHELL_RUNS_MAX_AGE", &v, e))?;
    }
    if let Some(v) = var("POLYSHELL_RUNS_OUTPUT_CAP") {
        retention.output_cap = bytes(&v).map_err(|e| bad("POLYSHELL_RUNS_OUTPUT_CAP", &v, e))?;
    }
    let dir = match var("POLYSHELL_RUNS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Ledger::default_dir().ok_or_else(|| CliError::usage(NO_PLACE))?,
    };
    if !dir.is_absolute() {
        return Err(CliError::usage(format!(
            "the run ledger's directory must be an absolute path, not `{}`",
            dir.display()
        )));
    }
    Ok(Ledger::new(dir, retention))
}

/// A size in bytes: `1048576`, `512K`, `16M`, `1G`.
fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is not a size (bytes, or with K, M, G)"))
}

/// The SHA-256 of a file, in hex (`None` when it cannot be read).
pub fn digest(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// What a run's header holds besides the id and the time: enough to show it and run it again.
pub struct Header {
    /// The arguments after the program's name.
    pub argv: Vec<String>,
    /// `run uptime`, `schedule release`: for the listing.
    pub what: String,
    pub polyfile: Option<PathBuf>,
    /// Sites a rerun is limited to (a rerun of the failed sites).
    pub only: Option<Vec<String>>,
    pub rerun_of: Option<String>,
}

impl Header {
    /// The header's fields, with the sites the run targets and how many actions each gets,
    /// the roles they are in (for the web view's filter) and the chain of schedules.
    pub fn fields(
        &self,
        sites: &[(String, usize)],
        store: &polyshell_sites::SiteStore,
        chain: &[polyshell_sched::Schedule],
    ) -> Map<String, Value> {
        let cwd = std::env::current_dir().ok();
        let polyfile = self.polyfile.as_ref().map(|p| {
            let path = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            json!({"path": path.display().to_string(), "sha256": digest(p)})
        });
        let mut map = Map::new();
        map.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        map.insert("what".into(), json!(self.what));
        map.insert("argv".into(), json!(self.argv));
        map.insert("cwd".into(), json!(cwd.map(|c| c.display().to_string())));
        map.insert("polyfile".into(), json!(polyfile));
        map.insert(
            "targets".into(),
            json!(range::fold(sites.iter().map(|(s, _)| s.as_str()))),
        );
        let mut planned = Map::new();
        for (site, n) in sites {
            planned.insert(site.clone(), json!(n));
        }
        map.insert("sites".into(), Value::Object(planned));
        // Roles of the run's sites: declared ones only (not each site's own name, not the
        // roles the CLI makes for ad hoc commands).
        let mut roles = Map::new();
        for role in store.role_names() {
            if role == polyshell_sites::ALL || role.contains(':') || store.get(&role).is_some() {
                continue;
            }
            let members: Vec<String> = store
                .list(&role, ())
                .into_iter()
                .filter(|m| sites.iter().any(|(s, _)| s == m))
                .collect();
            if !members.is_empty() {
                roles.insert(role, json!(members));
            }
        }
        map.insert("roles".into(), Value::Object(roles));
        let chain: Vec<Value> = chain
            .iter()
            .map(|s| json!({"name": s.name, "mode": s.mode.as_str(), "jobs": s.jobs}))
            .collect();
        map.insert("chain".into(), json!(chain));
        map.insert("pid".into(), json!(std::process::id()));
        if let Some(only) = &self.only {
            map.insert("only".into(), json!(only));
        }
        if let Some(id) = &self.rerun_of {
            map.insert("rerun_of".into(), json!(id));
        }
        map
    }
}

/// What the ledger keeps of a summary: the exit status and every site's outcome.
pub fn summary_json(summary: &Summary, status: u8, stopped: bool) -> Value {
    json!({
        "status": status,
        "stopped": stopped,
        "elapsed_ms": summary.elapsed.as_millis() as u64,
        "ok": summary.ok,
        "failed": summary.failed.iter().map(|(s, w)| json!({"site": s, "reason": w})).collect::<Vec<_>>(),
        "skipped": summary.skipped.iter().map(|(s, w)| json!({"site": s, "reason": w})).collect::<Vec<_>>(),
        "longest_lock_wait": summary.json()["longest_lock_wait"],
    })
}

/// Each site's outcome in a record: from its summary, or (a killed run) from its events.
pub struct Outcomes {
    pub summary: Summary,
    /// Sites that never finished all their actions (a killed run).
    pub unfinished: Vec<String>,
    pub finished: bool,
    /// Not finished, and the process that records it is alive: the run is going on.
    pub running: bool,
}

impl Outcomes {
    pub fn of(run: &RunRecord) -> Outcomes {
        if let Some(s) = &run.summary {
            let names = |key: &str| -> Vec<(String, String)> {
                s.get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| {
                                Some((
                                    v.get("site")?.as_str()?.to_owned(),
                                    v.get("reason")?.as_str().unwrap_or("").to_owned(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let ok = strings(s, "ok").unwrap_or_default();
            return Outcomes {
                summary: Summary {
                    ok,
                    failed: names("failed"),
                    skipped: names("skipped"),
                    elapsed: Duration::from_millis(
                        s.get("elapsed_ms").and_then(Value::as_u64).unwrap_or(0),
                    ),
                    longest_lock_wait: s.get("longest_lock_wait").and_then(|w| {
                        Some(LockWait {
                            lock: w.get("lock")?.as_str()?.to_owned(),
                            site: w.get("site")?.as_str()?.to_owned(),
                            waited: Duration::from_millis(w.get("waited_ms")?.as_u64()?),
                        })
                    }),
                },
                unfinished: Vec::new(),
                finished: true,
                running: false,
            };
        }
        // A killed run: a site succeeded when every action it was planned finished ok.
        let planned: Vec<(String, u64)> = planned_sites(run);
        let mut done: BTreeMap<String, u64> = BTreeMap::new();
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut skipped: Vec<(String, String)> = Vec::new();
        for v in run.events().unwrap_or_default() {
            if let Some(Event::ActionFinished { site, status, .. }) = Event::from_json(&v) {
                match status {
                    polyshell_sched::Status::Ok => *done.entry(site).or_default() += 1,
                    polyshell_sched::Status::Failed(why) => {
                        if !failed.iter().any(|(s, _)| *s == site) {
                            failed.push((site, why));
                        }
                    }
                    polyshell_sched::Status::Skipped(why) => {
                        if !skipped.iter().any(|(s, _)| *s == site) {
                            skipped.push((site, why.to_string()));
                        }
                    }
                }
            }
        }
        skipped.retain(|(s, _)| !failed.iter().any(|(f, _)| f == s));
        let mut ok = Vec::new();
        let mut unfinished = Vec::new();
        for (site, n) in planned {
            if failed.iter().any(|(s, _)| *s == site) || skipped.iter().any(|(s, _)| *s == site) {
                continue;
            }
            if done.get(&site).copied().unwrap_or(0) >= n {
                ok.push(site);
            } else {
                unfinished.push(site);
            }
        }
        let elapsed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(run.started_unix()));
        Outcomes {
            summary: Summary {
                ok,
                failed,
                skipped,
                elapsed,
                longest_lock_wait: None,
            },
            unfinished,
            finished: false,
            running: recorder_alive(run),
        }
    }

    /// Sites that did not succeed: failed, skipped (unreachable, cancelled, never started)
    /// and unfinished, in the run's order.
    pub fn not_ok(&self) -> Vec<String> {
        let mut sites: Vec<String> = self.summary.failed.iter().map(|(s, _)| s.clone()).collect();
        sites.extend(self.summary.skipped.iter().map(|(s, _)| s.clone()));
        sites.extend(self.unfinished.iter().cloned());
        sites
    }
}

/// Whether the process that recorded `run` still lives (a run without a summary is then going
/// on, else it was killed). A recycled pid can make a dead run look alive until that process
/// ends; the start time in `/proc` rules that out where it can.
pub fn recorder_alive(run: &RunRecord) -> bool {
    let Some(pid) = run.header.get("pid").and_then(Value::as_u64) else {
        return false;
    };
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // A process that started after the run did is not the run's.
    match process_started(pid) {
        Some(started) => started <= run.started_unix() + 1,
        None => true,
    }
}

/// When process `pid` started (seconds since the epoch), from `/proc`: field 22 of its `stat`
/// (clock ticks since boot) and the boot time in `/proc/stat`.
fn process_started(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| boot + ticks / hz as u64)
}

/// A list of strings in a JSON object (`argv`, `ok`, `only`); `None` when absent.
fn strings(map: &Map<String, Value>, key: &str) -> Option<Vec<String>> {
    map.get(key).and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    })
}

/// The run's sites and how many actions each was planned.
pub fn planned_sites(run: &RunRecord) -> Vec<(String, u64)> {
    run.header
        .get("sites")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(1)))
                .collect()
        })
        .unwrap_or_default()
}

fn text<'a>(run: &'a RunRecord, key: &str) -> &'a str {
    run.header.get(key).and_then(Value::as_str).unwrap_or("")
}

fn clock(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() / 60 % 60)
    }
}

/// `polyshell runs`: recent runs, newest first, one line each.
pub fn list(ledger: &Ledger) -> Result<(), CliError> {
    let runs = ledger
        .runs()
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", ledger.dir().display())))?;
    if runs.is_empty() {
        eprintln!(
            "polyshell: no run is recorded in {}",
            ledger.dir().display()
        );
        return Ok(());
    }
    println!(
        "{:<6}  {:<20}  {:>5} {:>6} {:>7}  {:>8}  WHAT",
        "ID", "STARTED (UTC)", "OK", "FAILED", "SKIPPED", "TIME"
    );
    for run in &runs {
        let outcomes = Outcomes::of(run);
        let s = &outcomes.summary;
        let time = if outcomes.finished {
            clock(s.elapsed)
        } else if outcomes.running {
            "running".into()
        } else {
            "unfinished".into()
        };
        let started = text(run, "started").replace('T', " ").replace('Z', "");
        let mut what: String = text(run, "what").chars().take(60).collect();
        if what.len() < text(run, "what").len() {
            what.push('…');
        }
        println!(
            "{:<6}  {:<20}  {:>5} {:>6} {:>7}  {:>8}  {what} on {}",
            run.id,
            started,
            s.ok.len(),
            s.failed.len(),
            s.skipped.len() + outcomes.unfinished.len(),
            time,
            text(run, "targets"),
        );
    }
    Ok(())
}

/// `polyshell runs show ID|last`: the run's output again in `mode`, then its summary.
pub fn show(ledger: &Ledger, id: &str, mode: OutputMode) -> Result<(), CliError> {
    let run = ledger.find(id).map_err(CliError::usage)?;
    let events = run
        .events()
        .map_err(|e| CliError::usage(format!("cannot read the run {}: {e}", run.dir.display())))?;
    let outcomes = Outcomes::of(&run);
    let argv = strings(&run.header, "argv").unwrap_or_default();
    let terminal = Terminal::new(false);
    let console = {
        let terminal = terminal.clone();
        Console::new(move |stream, bytes| terminal.write(stream, bytes))
    };
    let line = |stream: ConsoleStream, text: String| console.write(stream, text.as_bytes());
    if mode != OutputMode::Json {
        line(
            ConsoleStream::Stderr,
            format!(
                "polyshell: run {} started {} in {}: polyshell {}\n",
                run.id,
                text(&run, "started"),
                run.header.get("cwd").and_then(Value::as_str).unwrap_or("?"),
                shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
            ),
        );
    }
    let sites: Vec<String> = planned_sites(&run).into_iter().map(|(s, _)| s).collect();
    let reporter = Reporter::new(mode, console.clone(), false, &sites, 0);
    for v in &events {
        match (mode, Event::from_json(v)) {
            (OutputMode::Json, _) => line(ConsoleStream::Stdout, format!("{v}\n")),
            (_, Some(event)) => reporter.event(event),
            (_, None) => {
                if v.get("event").and_then(Value::as_str) == Some("record_capped") {
                    line(
                        ConsoleStream::Stderr,
                        format!(
                            "polyshell: (output past {} bytes was not recorded)\n",
                            v.get("output_cap_bytes")
                                .and_then(Value::as_u64)
                                .unwrap_or(0)
                        ),
                    );
                }
            }
        }
    }
    reporter.print_gathered();
    match mode {
        OutputMode::Json => {
            let mut v = outcomes.summary.json();
            v["finished"] = json!(outcomes.finished);
            line(ConsoleStream::Stdout, format!("{v}\n"));
        }
        _ => {
            line(ConsoleStream::Stderr, outcomes.summary.text(false));
            if !outcomes.finished {
                line(
                    ConsoleStream::Stderr,
                    format!(
                        "polyshell: run {} did not finish (killed, or still running); {} site(s) never finished: {}\n",
                        run.id,
                        outcomes.unfinished.len(),
                        range::fold(&outcomes.unfinished)
                    ),
                );
            }
        }
    }
    terminal.finish();
    Ok(())
}

/// What `rerun` takes from a record.
pub struct Rerun {
    pub id: String,
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub polyfile: Option<PathBuf>,
    /// Sites to limit the rerun to (`None`: the run's own targets).
    pub only: Option<Vec<String>>,
}

/// The rerun of `id` (`--failed`: only on the sites that did not succeed). Says so when the
/// Polyfile changed since.
pub fn rerun(ledger: &Ledger, id: &str, failed: bool) -> Result<Rerun, CliError> {
    let run = ledger.find(id).map_err(CliError::usage)?;
    let argv = strings(&run.header, "argv").ok_or_else(|| {
        CliError::usage(format!("run {}: its record has no command line", run.id))
    })?;
    let polyfile = run.header.get("polyfile").filter(|v| !v.is_null());
    let path = polyfile
        .and_then(|p| p.get("path"))
        .and_then(Value::as_str)
        .map(PathBuf::from);
    if let Some(path) = &path {
        let then = polyfile
            .and_then(|p| p.get("sha256"))
            .and_then(Value::as_str);
        match digest(path) {
            None => {
                return Err(CliError::usage(format!(
                    "run {} used {}, which cannot be read now",
                    run.id,
                    path.display()
                )))
            }
            Some(now) if Some(now.as_str()) != then => eprintln!(
                "polyshell: note: {} changed since run {}; the current one is used",
                path.display(),
                run.id
            ),
            Some(_) => {}
        }
    }
    let recorded_only = strings(&run.header, "only");
    let only = if failed {
        Some(Outcomes::of(&run).not_ok())
    } else {
        recorded_only
    };
    Ok(Rerun {
        id: run.id.clone(),
        argv,
        cwd: run
            .header
            .get("cwd")
            .and_then(Value::as_str)
            .map(PathBuf::from),
        polyfile: path,
        only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_suffixes_and_refuse_the_rest() {
        assert_eq!(bytes("1024"), Ok(1024));
        assert_eq!(bytes("16M"), Ok(16 << 20));
        assert_eq!(bytes("2k"), Ok(2048));
        for bad in ["", "M", "-1", "1.5M", "99999999999999999999G", "1T"] {
            assert!(bytes(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
