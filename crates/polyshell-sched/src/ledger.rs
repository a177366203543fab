//! The run ledger: each run written down as it goes, so that it can be listed, shown again
//! and run again (`polyshell runs`, `polyshell rerun`).
//!
//! A run is a directory `STARTED-ID` (`20261202T021924.123456Z-k3x9q1`, UTC) under the ledger's
//! directory holding:
//! - `run.json`: the header, written before anything runs: `id`, `started` (RFC 3339, UTC),
//!   `started_unix`, and the fields of whoever records (the CLI puts the command line, the
//!   Polyfile's path and digest, the sites).
//! - `events.jsonl`: every [`Event`] as [`Event::to_json`] makes it, one per line, appended as
//!   the run goes (flushed at every event but output lines, which are flushed in blocks of
//!   8 KiB and with the next other event): a run killed with SIGKILL leaves a usable record.
//!   Output past the [`Retention::output_cap`] is dropped, and a `record_capped` line says so.
//! - `summary.json`: written at the end (absent when the run was killed).
//!
//! Directories are 0700 and files 0600, whatever the umask. The ledger writes what it is
//! given: it is the caller's duty that no secret is in a header (the sudo agent's password
//! never enters an event). Old runs are removed when a new one starts: beyond the newest
//! [`Retention::keep`], or older than [`Retention::max_age`].
//!
//! ```
//! use polyshell_sched::ledger::{Ledger, Retention};
//! use polyshell_sched::{Event, EventSink};
//!
//! let dir = std::env::temp_dir().join(format!("ledger-doc-{}", std::process::id()));
//! let ledger = Ledger::new(&dir, Retention::default());
//! let recorder = ledger.record("abc123", serde_json::Map::new()).unwrap();
//! recorder.event(Event::Report { action: "abc123-1-1".into(), site: "web1".into(), message: "hi".into() });
//! recorder.finish(serde_json::json!({"status": 0})).unwrap();
//! let run = ledger.find("last").unwrap();
//! assert_eq!(run.id, "abc123");
//! assert_eq!(run.events().unwrap().len(), 1);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use crate::event::{Event, EventSink};
use serde_json::{json, Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much the ledger keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// At most this many runs (the newest).
    pub keep: usize,
    /// No run older than this.
    pub max_age: Duration,
    /// Bytes of output events recorded per run (as written, JSON); the rest is counted (the
    /// lines' own bytes), not kept.
    pub output_cap: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep: 200,
            max_age: Duration::from_secs(30 * 24 * 3600),
            output_cap: 16 << 20,
        }
    }
}

/// A directory of run records.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
    retention: Retention,
}

/// One run of the ledger, as found on disk.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run's id (its batch id).
    pub id: String,
    /// The run's directory.
    pub dir: PathBuf,
    /// `run.json`.
    pub header: Map<String, Value>,
    /// `summary.json`; `None` when the run never finished (killed, or still running).
    pub summary: Option<Map<String, Value>>,
}

impl RunRecord {
    /// The run's events, in order. A line cut short by a kill is left out.
    pub fn events(&self) -> io::Result<Vec<Value>> {
        let text = match fs::read(self.dir.join(EVENTS)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(text
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect())
    }

    /// When the run started (seconds since the epoch).
    pub fn started_unix(&self) -> u64 {
        self.header
            .get("started_unix")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }
}

const HEADER: &str = "run.json";
const EVENTS: &str = "events.jsonl";
const SUMMARY: &str = "summary.json";

/// Output lines are written out once this much is buffered (other events at once).
const BLOCK: usize = 8 * 1024;

impl Ledger {
    /// A ledger in `dir` (created with mode 0700 on first use), keeping what `retention` says.
    pub fn new(dir: impl Into<PathBuf>, retention: Retention) -> Ledger {
        Ledger {
            dir: dir.into(),
            retention,
        }
    }

    /// `$XDG_STATE_HOME/polyshell/runs`, else `~/.local/state/polyshell/runs`.
    pub fn default_dir() -> Option<PathBuf> {
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| {
                std::env::var_os("HOME").map(|h| Path::new(&h).join(".local").join("state"))
            })?;
        Some(state.join("polyshell").join("runs"))
    }

    /// The directory the runs are recorded in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the ledger keeps.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Starts the record of run `id`: its directory and header (with `id` and the start time
    /// added to `header`), then removes what retention no longer keeps.
    pub fn record(&self, id: &str, mut header: Map<String, Value>) -> io::Result<Arc<Recorder>> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{id}` is not a run id (letters, digits, `-`)"),
            ));
        }
        private_dir(&self.dir)?;
        let now = SystemTime::now();
        let stamp = humantime::format_rfc3339_seconds(now).to_string();
        // Microseconds in the name: runs started in one second still sort in order.
        let precise = humantime::format_rfc3339_micros(now).to_string();
        let dir = self.dir.join(format!("{}-{id}", compact(&precise)));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let mut fields = Map::new();
        fields.insert("id".into(), json!(id));
        fields.insert("started".into(), json!(stamp));
        fields.insert(
            "started_unix".into(),
            json!(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
        );
        fields.append(&mut header);
        write_file(&dir.join(HEADER), &Value::Object(fields))?;
        let events = private_file(&dir.join(EVENTS))?;
        self.prune(&dir);
        Ok(Arc::new(Recorder {
            dir,
            cap: self.retention.output_cap,
            state: Mutex::new(RecorderState {
                file: BufWriter::with_capacity(BLOCK * 2, events),
                output: 0,
                dropped: 0,
                failed: false,
            }),
        }))
    }

    /// Every run, newest first. Directories that are not runs are ignored.
    pub fn runs(&self) -> io::Result<Vec<RunRecord>> {
        let mut runs = Vec::new();
        for (name, path) in self.run_dirs()?.into_iter().rev() {
            let Some((_, id)) = name.split_once('-') else {
                continue;
            };
            let header = match read_object(&path.join(HEADER)) {
                Some(h) => h,
                None => continue,
            };
            runs.push(RunRecord {
                id: id.to_owned(),
                summary: read_object(&path.join(SUMMARY)),
                dir: path,
                header,
            });
        }
        Ok(runs)
    }

    /// The run `id` (`last`: the newest; a unique prefix of an id will do).
    pub fn find(&self, id: &str) -> Result<RunRecord, String> {
        let runs = self
            .runs()
            .map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
        if id == "last" {
            return runs
                .into_iter()
                .next()
                .ok_or_else(|| format!("no run is recorded in {}", self.dir.display()));
        }
        if let Some(run) = runs.iter().find(|r| r.id == id) {
            return Ok(run.clone());
        }
        let matching: Vec<&RunRecord> = runs.iter().filter(|r| r.id.starts_with(id)).collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no run `{id}` in the ledger ({}); `polyshell runs` lists them",
                self.dir.display()
            )),
            many => Err(format!(
                "`{id}` could be any of {}",
                many.iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Run directories, oldest first: `(name, path)`.
    fn run_dirs(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut dirs: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                started_of(&name)?;
                Some((name, e.path()))
            })
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Removes the runs retention does not keep; `current` is never removed.
    fn prune(&self, current: &Path) {
        let Ok(dirs) = self.run_dirs() else {
            return;
        };
        let now = SystemTime::now();
        let excess = dirs.len().saturating_sub(self.retention.keep.max(1));
        for (i, (name, path)) in dirs.iter().enumerate() {
            if path == current {
                continue;
            }
            let too_old = started_of(name)
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.retention.max_age);
            if i < excess || too_old {
                if let Err(e) = fs::remove_dir_all(path) {
                    tracing::warn!("cannot remove the old run {}: {e}", path.display());
                }
            }
        }
    }
}

/// `2026-12-02T02:19:24.123456Z` → `20261202T021924.123456Z`.
fn compact(rfc3339: &str) -> String {
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// The start time in a run directory's name (`None`: not a run directory).
fn started_of(name: &str) -> Option<SystemTime> {
    let (stamp, id) = name.split_once('-')?;
    let b = stamp.as_bytes();
    if id.is_empty()
        || b.len() != 23
        || b[8] != b'T'
        || b[15] != b'.'
        || b[22] != b'Z'
        || !stamp.is_ascii()
    {
        return None;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..]
    );
    humantime::parse_rfc3339(&text).ok()
}

/// Creates `dir` (and missing parents) as 0700; an existing `dir` is made 0700.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `value` to `path` whole (a temporary file renamed over it), 0600.
fn write_file(path: &Path, value: &Value) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = private_file(&tmp)?;
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

fn read_object(path: &Path) -> Option<Map<String, Value>> {
    match serde_json::from_slice(&fs::read(path).ok()?).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Records one run's events: an [`EventSink`]. [`finish`](Recorder::finish) ends the record.
pub struct Recorder {
    dir: PathBuf,
    cap: u64,
    state: Mutex<RecorderState>,
}

struct RecorderState {
    file: BufWriter<File>,
    /// Bytes of output events written so far, and output bytes dropped past the cap.
    output: u64,
    dropped: u64,
    /// A write failed (a full disk): said once, then the record is left as it is.
    failed: bool,
}

impl Recorder {
    /// The run's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ends the record: what is buffered is written, and `summary.json` with `summary` (an
    /// object) and `output_dropped_bytes` when output was past the cap.
    pub fn finish(&self, summary: Value) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.file.flush()?;
        let mut summary = match summary {
            Value::Object(map) => map,
            other => {
                let mut map = Map::new();
                map.insert("summary".into(), other);
                map
            }
        };
        if state.dropped > 0 {
            summary.insert("output_cap_bytes".into(), json!(self.cap));
            summary.insert("output_dropped_bytes".into(), json!(state.dropped));
        }
        write_file(&self.dir.join(SUMMARY), &Value::Object(summary))
    }

    fn write(&self, state: &mut RecorderState, value: &Value, flush: bool) {
        self.write_line(state, value.to_string(), flush);
    }

    fn write_line(&self, state: &mut RecorderState, mut line: String, flush: bool) {
        if state.failed {
            return;
        }
        line.push('\n');
        let result = state.file.write_all(line.as_bytes()).and_then(|()| {
            if flush {
                state.file.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            state.failed = true;
            tracing::warn!(
                "the run record in {} is incomplete: {e}",
                self.dir.display()
            );
        }
    }
}

impl EventSink for Recorder {
    fn event(&self, event: Event) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Event::Output { line, .. } = &event {
            // Past the cap, output is only counted (not even serialized).
            if state.dropped > 0 {
                state.dropped += line.len() as u64 + 1;
                return;
            }
            let text = event.to_json().to_string();
            let size = text.len() as u64 + 1;
            if state.output + size > self.cap {
                let capped = json!({"event": "record_capped", "output_cap_bytes": self.cap});
                self.write(&mut state, &capped, true);
                state.dropped += line.len() as u64 + 1;
                return;
            }
            state.output += size;
            let flush = state.file.buffer().len() >= BLOCK;
            self.write_line(&mut state, text, flush);
            return;
        }
        self.write(&mut state, &event.to_json(), true);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = state.file.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directory_names_round_trip() {
        let t = humantime::parse_rfc3339("2026-12-02T02:19:24.000123Z").unwrap();
        let name = format!(
            "{}-abc",
            compact(&humantime::format_rfc3339_micros(t).to_string())
        );
        assert_eq!(name, "20261202T021924.000123Z-abc");
        assert_eq!(started_of(&name), Some(t));
        assert_eq!(started_of("notes"), None);
        assert_eq!(started_of("20261202T021924.000123Z-"), None);
        assert_eq!(started_of("2026120xT021924.000123Z-a"), None);
        assert_eq!(started_of("20261202T021924Z-a"), None);
    }
}
