//! The Polyfile: sites and roles (loaded by `polyshell-sites`), jobs whose actions are lists
//! of steps, and schedules (chains). Every error has file, line and column; all are reported
//! together, and nothing runs while there is one.

use crate::locks::{self, Declared};
use crate::subst;
use polyshell_sched::{Mode, Schedule};
use polyshell_sites::diag::{Diagnostic, Source};
use polyshell_sites::{duration_from_seconds, inventory, SiteStore, SECONDS_RULE};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;
use toml_edit::{ImDocument, Item, Table, Value};

/// A loaded, checked Polyfile.
pub struct Polyfile {
    /// The sites and roles of `[sites]` and `[roles]`.
    pub sites: SiteStore,
    /// The jobs, by name.
    pub jobs: BTreeMap<String, JobSpec>,
    /// Each schedule's chain, ready to run (the CLI adds its global options).
    pub schedules: BTreeMap<String, Vec<Schedule>>,
    /// `[locks.NAME]`, built once: every job and chain entry naming one shares it.
    pub locks: BTreeMap<String, Declared>,
    /// `[settings] persist`: keep SSH connections this long after a run (`--persist`).
    pub persist: Option<std::time::Duration>,
}

/// A job: its actions, in order.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The job's actions (its `[[jobs.NAME]]` tables), in order.
    pub actions: Vec<ActionSpec>,
}

/// One `[[jobs.NAME]]` table: its steps run on every site of its roles.
#[derive(Debug, Clone, Default)]
pub struct ActionSpec {
    /// The roles whose sites the action runs on.
    pub roles: Vec<String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// A time limit for each step (the site's `timeout` otherwise).
    pub timeout: Option<Duration>,
    /// Environment variables for every command of the action.
    pub env: Vec<(String, String)>,
    /// The directory commands start in.
    pub cwd: Option<String>,
    /// Locks of the Polyfile this action's work on a site takes (`locks = [...]`).
    pub locks: Vec<String>,
}

/// One step of an action.
#[derive(Debug, Clone)]
pub struct Step {
    /// What it does.
    pub kind: StepKind,
    /// Keep the step's trimmed stdout in the shared space under this key.
    pub set: Option<String>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// A command run on the site.
    Run(String),
    /// A command run on the site through sudo.
    Sudo(String),
    /// A command run here, once per site.
    Local(String),
    /// Files copied to the site.
    Upload {
        /// Where the files are (a local path for upload, a remote one for download).
        from: String,
        /// Where they go.
        to: String,
    },
    /// Files copied from the site.
    Download {
        /// Where the files are (a local path for upload, a remote one for download).
        from: String,
        /// Where they go.
        to: String,
    },
}

const TOP_KEYS: &[&str] = &["sites", "roles", "locks", "jobs", "schedules", "settings"];
const SETTINGS_KEYS: &[&str] = &["persist"];
const ACTION_KEYS: &[&str] = &[
    "roles", "run", "sudo", "local", "upload", "download", "steps", "timeout", "env", "cwd", "set",
    "locks",
];
const STEP_KINDS: &[&str] = &["run", "sudo", "local", "upload", "download"];
const SCHEDULE_KEYS: &[&str] = &[
    "jobs",
    "mode",
    "roles",
    "name",
    "desc",
    "break_on_error",
    "allow_missing_job",
    "fanout",
    "max_failures",
    "log",
    "report",
    "debug",
    "quiet",
    "locks",
];

struct Checker<'a> {
    source: &'a Source,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.diags.push(self.source.error(span, message));
    }
}

/// `[settings]`: options of every run of the Polyfile that the command line can override.
fn settings(c: &mut Checker, root: &Table) -> Option<std::time::Duration> {
    let item = root.get("settings")?;
    let Some(table) = item.as_table() else {
        c.error(item.span(), "`settings` must be a table ([settings])");
        return None;
    };
    let mut persist = None;
    for (key, item) in table.iter() {
        let span = key_span(table, key);
        match key {
            "persist" => {
                let parsed = match (item.as_str(), item.as_integer()) {
                    (Some(text), _) => crate::values::duration_or_zero(text),
                    (None, Some(n)) if n >= 0 => Ok(std::time::Duration::from_secs(n as u64)),
                    _ => Err("must be a duration (\"10m\", \"1h\") or whole seconds".into()),
                };
                match parsed {
                    Ok(d) => persist = Some(d),
                    Err(e) => c.error(item.span().or(span), format!("settings: `persist` {e}")),
                }
            }
            other => c.error(
                span,
                format!(
                    "settings: unknown key `{other}` (expected one of: {})",
                    SETTINGS_KEYS.join(", ")
                ),
            ),
        }
    }
    persist
}

fn key_span(table: &Table, key: &str) -> Option<Range<usize>> {
    table.key(key).and_then(|k| k.span())
}

/// Parses and checks `source`. On any error, every error.
pub fn load(source: &Source) -> Result<Polyfile, Vec<Diagnostic>> {
    let doc = ImDocument::parse(source.text()).map_err(|err| {
        vec![source.error(
            err.span(),
            format!("invalid TOML: {}", err.message().trim()),
        )]
    })?;
    let root = doc.as_table();
    let mut c = Checker {
        source,
        diags: Vec::new(),
    };
    for (key, _) in root.iter() {
        if !TOP_KEYS.contains(&key) {
            c.error(
                key_span(root, key),
                format!(
                    "unknown section `{key}` (expected one of: {})",
                    TOP_KEYS.join(", ")
                ),
            );
        }
    }
    let sites = SiteStore::new();
    inventory::load_tables(source, root, &sites, &mut c.diags);
    let declared = lock_tables(&mut c, root, &sites);

    let mut jobs = BTreeMap::new();
    if let Some(item) = root.get("jobs") {
        match item.as_table() {
            Some(table) => {
                for (name, item) in table.iter() {
                    let span = key_span(table, name);
                    if let Some(job) = job(&mut c, &sites, &declared, name, item, span) {
                        jobs.insert(name.to_owned(), job);
                    }
                }
            }
            None => c.error(
                item.span(),
                "`jobs` must be a table of jobs ([[jobs.NAME]])",
            ),
        }
    }
    let sets: Vec<String> = jobs
        .values()
        .flat_map(|j| &j.actions)
        .flat_map(|a| &a.steps)
        .filter_map(|s| s.set.clone())
        .collect();
    check_placeholders(&mut c, root, &sites, &sets);

    let mut schedules = BTreeMap::new();
    if let Some(item) = root.get("schedules") {
        match item.as_table() {
            Some(table) => {
                for (name, item) in table.iter() {
                    let span = key_span(table, name);
                    let known = Known {
                        jobs: &jobs,
                        locks: &declared,
                        sites: &sites,
                    };
                    if let Some(chain) = schedule(&mut c, &known, name, item, span) {
                        schedules.insert(name.to_owned(), chain);
                    }
                }
            }
            None => c.error(item.span(), "`schedules` must be a table of schedules"),
        }
    }
    let persist = settings(&mut c, root);
    if c.diags.is_empty() {
        Ok(Polyfile {
            sites,
            jobs,
            schedules,
            locks: declared,
            persist,
        })
    } else {
        c.diags.sort_by_key(|d| (d.line, d.column));
        Err(c.diags)
    }
}

fn strings(item: &Item) -> Option<Vec<String>> {
    if let Some(s) = item.as_str() {
        return Some(vec![s.to_owned()]);
    }
    item.as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// `[locks.NAME]` tables, built; a broken one is an error at its table.
fn lock_tables(c: &mut Checker, root: &Table, sites: &SiteStore) -> BTreeMap<String, Declared> {
    let mut declared = BTreeMap::new();
    let Some(item) = root.get("locks") else {
        return declared;
    };
    let Some(table) = item.as_table() else {
        c.error(
            item.span(),
            "`locks` must be a table of locks ([locks.NAME])",
        );
        return declared;
    };
    for (name, item) in table.iter() {
        let span = item.span().or_else(|| key_span(table, name));
        let fields = match inventory::to_json(item) {
            Ok(serde_json::Value::Object(fields)) if item.is_table_like() => fields,
            Ok(_) => {
                c.error(
                    span,
                    format!("lock `{name}` must be a table ([locks.{name}])"),
                );
                continue;
            }
            Err(e) => {
                c.error(span, format!("lock `{name}`: {e}"));
                continue;
            }
        };
        match locks::build(name, &fields, sites) {
            Ok(lock) => {
                declared.insert(name.to_owned(), lock);
            }
            Err(e) => {
                // At the offending field when the message names one: an unknown key at
                // the key, a bad value at the value, an unknown kind at `kind`'s value.
                let named = e.split('`').nth(1).unwrap_or_default();
                let at = item
                    .as_table_like()
                    .and_then(|t| {
                        let field = if e.starts_with("unknown lock kind") {
                            "kind"
                        } else {
                            named
                        };
                        let value = t.get(field)?;
                        if e.starts_with("unknown key") {
                            t.key(field)?.span()
                        } else {
                            value.span()
                        }
                    })
                    .or(span);
                c.error(at, format!("lock `{name}`: {e}"));
            }
        }
    }
    declared
}

/// Lock names in `item` (a list), each declared; the good ones.
fn lock_names(
    c: &mut Checker,
    owner: &str,
    item: &Item,
    span: Option<Range<usize>>,
    declared: &BTreeMap<String, Declared>,
) -> Vec<String> {
    let Some(names) = strings(item) else {
        c.error(
            span,
            format!("{owner}: `locks` must be a list of lock names"),
        );
        return Vec::new();
    };
    let mut good = Vec::new();
    for name in names {
        if declared.contains_key(&name) {
            good.push(name);
        } else {
            let known: Vec<&str> = declared.keys().map(String::as_str).collect();
            c.error(
                span.clone(),
                format!(
                    "{owner}: no lock `{name}` ({})",
                    if known.is_empty() {
                        "the Polyfile declares none: [locks.NAME]".to_owned()
                    } else {
                        format!("locks: {}", known.join(", "))
                    }
                ),
            );
        }
    }
    good
}

/// A `per = "KEY"` lock is taken only by sites with that key (unless `missing = "skip-lock"`).
fn check_lock_keys(
    c: &mut Checker,
    owner: &str,
    names: &[String],
    members: &[String],
    declared: &BTreeMap<String, Declared>,
    sites: &SiteStore,
    span: Option<Range<usize>>,
) {
    for name in names {
        let Some(need) = declared.get(name).and_then(|d| d.needs_key.as_ref()) else {
            continue;
        };
        let missing: Vec<&String> = members
            .iter()
            .filter(|m| {
                sites
                    .get(m)
                    .is_some_and(|s| !s.config().contains_key(&need.key))
            })
            .collect();
        if !missing.is_empty() {
            c.error(
                span.clone(),
                format!(
                    "{owner}: lock `{name}` is per `{key}`, and {} ha{} no `{key}` (give {} one, or `missing = \"skip-lock\"` in [locks.{name}])",
                    polyshell_sites::range::fold(&missing),
                    if missing.len() == 1 { "s" } else { "ve" },
                    if missing.len() == 1 { "it" } else { "them" },
                    key = need.key
                ),
            );
        }
    }
}

fn job(
    c: &mut Checker,
    sites: &SiteStore,
    declared: &BTreeMap<String, Declared>,
    name: &str,
    item: &Item,
    span: Option<Range<usize>>,
) -> Option<JobSpec> {
    let tables: Vec<&Table> = match item {
        Item::ArrayOfTables(a) => a.iter().collect(),
        Item::Table(t) => vec![t],
        _ => {
            c.error(
                item.span().or(span),
                format!("job `{name}` must be a table ([[jobs.{name}]]) of steps"),
            );
            return None;
        }
    };
    let mut actions = Vec::new();
    for table in tables {
        let before = c.diags.len();
        let action = action(c, sites, declared, name, table);
        if c.diags.len() == before {
            actions.push(action);
        }
    }
    Some(JobSpec { actions })
}

fn action(
    c: &mut Checker,
    sites: &SiteStore,
    declared: &BTreeMap<String, Declared>,
    job: &str,
    table: &Table,
) -> ActionSpec {
    let mut spec = ActionSpec::default();
    let mut action_set: Option<String> = None;
    for (key, item) in table.iter() {
        let span = item.span().or_else(|| key_span(table, key));
        match key {
            "roles" => match strings(item) {
                Some(r) => spec.roles = r,
                None => c.error(span, format!("job `{job}`: `roles` must be a list of role names")),
            },
            "run" | "sudo" | "local" => match strings(item) {
                Some(cmds) => spec.steps.extend(cmds.into_iter().map(|cmd| Step {
                    kind: command_step(key, cmd),
                    set: None,
                })),
                None => c.error(span, format!("job `{job}`: `{key}` must be a command or a list of commands")),
            },
            "upload" | "download" => match transfers(item) {
                Some(list) => spec.steps.extend(list.into_iter().map(|(from, to)| Step {
                    kind: if key == "upload" {
                        StepKind::Upload { from, to }
                    } else {
                        StepKind::Download { from, to }
                    },
                    set: None,
                })),
                None => c.error(
                    span,
                    format!("job `{job}`: `{key}` must be {{ from = \"...\", to = \"...\" }} or a list of them"),
                ),
            },
            "steps" => steps(c, job, item, &mut spec.steps),
            "timeout" => match item.as_float().or_else(|| item.as_integer().map(|i| i as f64)) {
                Some(s) => match duration_from_seconds(s) {
                    Ok(d) => spec.timeout = Some(d),
                    Err(rule) => c.error(span, format!("job `{job}`: `timeout` must be {rule}")),
                },
                None => c.error(span, format!("job `{job}`: `timeout` must be {SECONDS_RULE}")),
            },
            "cwd" => match item.as_str() {
                Some(d) => spec.cwd = Some(d.to_owned()),
                None => c.error(span, format!("job `{job}`: `cwd` must be a string")),
            },
            "env" => match item.as_table_like() {
                Some(vars) => {
                    for (k, v) in vars.iter() {
                        let valid = !k.is_empty()
                            && !k.starts_with(|ch: char| ch.is_ascii_digit())
                            && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                        match (valid, scalar(v)) {
                            (true, Some(v)) => spec.env.push((k.to_owned(), v)),
                            (false, _) => c.error(v.span().or(span.clone()), format!("job `{job}`: `{k}` is not a valid variable name")),
                            (_, None) => c.error(v.span().or(span.clone()), format!("job `{job}`: env `{k}` must be a string, number or boolean")),
                        }
                    }
                }
                None => c.error(span, format!("job `{job}`: `env` must be a table of variables")),
            },
            "locks" => {
                spec.locks = lock_names(c, &format!("job `{job}`"), item, span, declared)
            }
            "set" => match item.as_str() {
                Some(k) => action_set = Some(k.to_owned()),
                None => c.error(span, format!("job `{job}`: `set` must be a key name")),
            },
            other => c.error(
                key_span(table, other),
                format!("job `{job}`: unknown key `{other}` (expected one of: {})", ACTION_KEYS.join(", ")),
            ),
        }
    }
    if let Some(key) = action_set {
        match spec.steps.iter_mut().rev().find(|s| {
            matches!(
                s.kind,
                StepKind::Run(_) | StepKind::Sudo(_) | StepKind::Local(_)
            )
        }) {
            Some(step) => step.set = Some(key),
            None => c.error(
                key_span(table, "set"),
                format!("job `{job}`: `set` needs a run, sudo or local step"),
            ),
        }
    }
    if spec.steps.is_empty() {
        c.error(
            table.span(),
            format!(
                "job `{job}`: an action needs at least one step ({})",
                STEP_KINDS.join(", ")
            ),
        );
    }
    if spec.roles.is_empty() {
        spec.roles.push(job.to_owned());
    }
    let members = sites.list(&spec.roles, ());
    check_lock_keys(
        c,
        &format!("job `{job}`"),
        &spec.locks,
        &members,
        declared,
        sites,
        table.get("locks").and_then(Item::span),
    );
    if members.is_empty() {
        c.error(
            key_span(table, "roles").or(table.span()),
            format!(
                "job `{job}`: its roles ({}) match no site",
                spec.roles.join(", ")
            ),
        );
    }
    spec
}

fn scalar(v: &Item) -> Option<String> {
    match v.as_value()? {
        Value::String(s) => Some(s.value().clone()),
        Value::Integer(i) => Some(i.value().to_string()),
        Value::Float(f) => Some(f.value().to_string()),
        Value::Boolean(b) => Some(b.value().to_string()),
        _ => None,
    }
}

fn command_step(kind: &str, cmd: String) -> StepKind {
    match kind {
        "sudo" => StepKind::Sudo(cmd),
        "local" => StepKind::Local(cmd),
        _ => StepKind::Run(cmd),
    }
}

fn transfer(v: &dyn toml_edit::TableLike) -> Option<(String, String)> {
    let from = v.get("from")?.as_str()?.to_owned();
    let to = v.get("to")?.as_str()?.to_owned();
    (v.len() == 2).then_some((from, to))
}

fn transfers(item: &Item) -> Option<Vec<(String, String)>> {
    if let Some(t) = item.as_table_like() {
        return transfer(t).map(|x| vec![x]);
    }
    item.as_array()?
        .iter()
        .map(|v| v.as_inline_table().and_then(|t| transfer(t)))
        .collect()
}

fn steps(c: &mut Checker, job: &str, item: &Item, out: &mut Vec<Step>) {
    let Some(list) = item.as_array() else {
        c.error(
            item.span(),
            format!("job `{job}`: `steps` must be a list of {{ run = \"...\" }}-like tables"),
        );
        return;
    };
    for v in list.iter() {
        let Some(t) = v.as_inline_table() else {
            c.error(v.span(), format!("job `{job}`: each step must be a table like {{ run = \"...\", set = \"key\" }}"));
            continue;
        };
        let mut kind = None;
        let mut set = None;
        for (k, val) in t.iter() {
            match k {
                "run" | "sudo" | "local" => match val.as_str() {
                    Some(cmd) if kind.is_none() => kind = Some(command_step(k, cmd.to_owned())),
                    _ => c.error(val.span(), format!("job `{job}`: a step has one command string")),
                },
                "upload" | "download" => match val.as_inline_table().and_then(|x| transfer(x)) {
                    Some((from, to)) if kind.is_none() => {
                        kind = Some(if k == "upload" {
                            StepKind::Upload { from, to }
                        } else {
                            StepKind::Download { from, to }
                        })
                    }
                    _ => c.error(val.span(), format!("job `{job}`: `{k}` must be {{ from = \"...\", to = \"...\" }}")),
                },
                "set" => set = val.as_str().map(str::to_owned),
                other => c.error(
                    val.span(),
                    format!("job `{job}`: unknown step key `{other}` (expected run, sudo, local, upload, download, set)"),
                ),
            }
        }
        match kind {
            Some(kind) => out.push(Step { kind, set }),
            None => c.error(
                v.span(),
                format!("job `{job}`: a step needs one of {}", STEP_KINDS.join(", ")),
            ),
        }
    }
}

/// Checks every `{...}` in every step of every job: it must name something.
fn check_placeholders(c: &mut Checker, root: &Table, sites: &SiteStore, sets: &[String]) {
    let Some(jobs) = root.get("jobs").and_then(Item::as_table) else {
        return;
    };
    for (job, item) in jobs.iter() {
        let tables: Vec<&Table> = match item {
            Item::ArrayOfTables(a) => a.iter().collect(),
            Item::Table(t) => vec![t],
            _ => continue,
        };
        for table in tables {
            let roles = table
                .get("roles")
                .and_then(strings)
                .unwrap_or_else(|| vec![job.to_owned()]);
            let members = sites.list(&roles, ());
            let mut texts: Vec<(&str, Option<Range<usize>>)> = Vec::new();
            collect_strings(table, &mut texts);
            for (text, span) in texts {
                for (offset, placeholder) in subst::placeholders(text) {
                    if let Err(why) = subst::check(&placeholder, sites, &members, sets) {
                        let at = span.clone().map(|s| {
                            let p = s.start + 1 + offset;
                            p..p
                        });
                        c.error(at, format!("job `{job}`: `{{{placeholder}}}` {why}"));
                    }
                }
            }
        }
    }
}

fn collect_strings<'a>(table: &'a Table, out: &mut Vec<(&'a str, Option<Range<usize>>)>) {
    fn walk<'a>(v: &'a Value, out: &mut Vec<(&'a str, Option<Range<usize>>)>) {
        match v {
            Value::String(s) => out.push((s.value(), v.span())),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::InlineTable(t) => t.iter().for_each(|(_, x)| walk(x, out)),
            _ => {}
        }
    }
    for (key, item) in table.iter() {
        if matches!(
            key,
            "run" | "sudo" | "local" | "upload" | "download" | "steps" | "cwd" | "env"
        ) {
            if let Some(v) = item.as_value() {
                walk(v, out);
            }
        }
    }
}

/// What a schedule may name.
struct Known<'a> {
    jobs: &'a BTreeMap<String, JobSpec>,
    locks: &'a BTreeMap<String, Declared>,
    sites: &'a SiteStore,
}

fn schedule(
    c: &mut Checker,
    known: &Known<'_>,
    name: &str,
    item: &Item,
    span: Option<Range<usize>>,
) -> Option<Vec<Schedule>> {
    let Some(table) = item.as_table() else {
        c.error(
            item.span().or(span),
            format!("schedule `{name}` must be a table"),
        );
        return None;
    };
    let mut chain = Vec::new();
    if let Some(list) = table.get("chain") {
        for (k, _) in table.iter().filter(|(k, _)| *k != "chain" && *k != "desc") {
            c.error(
                key_span(table, k),
                format!("schedule `{name}`: with `chain`, put `{k}` inside each chain entry"),
            );
        }
        let Some(list) = list.as_array() else {
            c.error(
                list.span(),
                format!("schedule `{name}`: `chain` must be a list of {{ jobs = [...] }} tables"),
            );
            return None;
        };
        for v in list.iter() {
            match v.as_inline_table() {
                Some(t) => {
                    let pairs: Vec<(&str, Item)> =
                        t.iter().map(|(k, v)| (k, Item::Value(v.clone()))).collect();
                    let spans: Vec<Option<Range<usize>>> =
                        t.iter().map(|(_, v)| v.span()).collect();
                    chain.push(schedule_entry(c, known, name, &pairs, &spans, v.span()));
                }
                None => c.error(
                    v.span(),
                    format!(
                        "schedule `{name}`: each chain entry must be a table {{ jobs = [...] }}"
                    ),
                ),
            }
        }
    } else {
        let pairs: Vec<(&str, Item)> = table.iter().map(|(k, v)| (k, v.clone())).collect();
        let spans: Vec<Option<Range<usize>>> =
            table.iter().map(|(k, _)| key_span(table, k)).collect();
        chain.push(schedule_entry(c, known, name, &pairs, &spans, span));
    }
    Some(chain)
}

fn schedule_entry(
    c: &mut Checker,
    known: &Known<'_>,
    name: &str,
    pairs: &[(&str, Item)],
    spans: &[Option<Range<usize>>],
    at: Option<Range<usize>>,
) -> Schedule {
    let jobs = known.jobs;
    let mut s = Schedule::new(()).name(name);
    let mut jobs_span = at.clone();
    let mut lock_names_here: Vec<String> = Vec::new();
    let mut locks_span = None;
    for ((key, item), span) in pairs.iter().zip(spans) {
        let span = item.span().or(span.clone());
        let flag = |c: &mut Checker, target: &mut bool| match item.as_bool() {
            Some(b) => *target = b,
            None => c.error(
                span.clone(),
                format!("schedule `{name}`: `{key}` must be true or false"),
            ),
        };
        match *key {
            "jobs" => match strings(item) {
                Some(j) => {
                    s.jobs = j;
                    jobs_span = span.clone();
                }
                None => c.error(
                    span,
                    format!("schedule `{name}`: `jobs` must be a list of job names"),
                ),
            },
            "mode" => match item.as_str().map(str::parse::<Mode>) {
                Some(Ok(m)) => s.mode = m,
                Some(Err(e)) => c.error(span, format!("schedule `{name}`: {e}")),
                None => c.error(span, format!("schedule `{name}`: `mode` must be a string")),
            },
            "roles" => match strings(item) {
                Some(r) => s.roles = r,
                None => c.error(
                    span,
                    format!("schedule `{name}`: `roles` must be a list of role names"),
                ),
            },
            "name" => s.name = item.as_str().unwrap_or(name).to_owned(),
            "desc" => s.desc = item.as_str().unwrap_or("").to_owned(),
            "fanout" | "max_failures" => match item.as_integer() {
                Some(n) if n > 0 => {
                    if *key == "fanout" {
                        s.fanout = Some(n as usize)
                    } else {
                        s.max_failures = Some(n as usize)
                    }
                }
                _ => c.error(
                    span,
                    format!("schedule `{name}`: `{key}` must be a positive whole number"),
                ),
            },
            "break_on_error" => flag(c, &mut s.break_on_error),
            "allow_missing_job" => flag(c, &mut s.allow_missing_job),
            "log" => flag(c, &mut s.log),
            "report" => flag(c, &mut s.report),
            "debug" => flag(c, &mut s.debug),
            "quiet" => flag(c, &mut s.quiet),
            "locks" => {
                let owner = format!("schedule `{name}`");
                lock_names_here = lock_names(c, &owner, item, span.clone(), known.locks);
                locks_span = span;
            }
            other => c.error(
                span,
                format!(
                    "schedule `{name}`: unknown key `{other}` (expected one of: {})",
                    SCHEDULE_KEYS.join(", ")
                ),
            ),
        }
    }
    if s.jobs.is_empty() {
        c.error(
            at.clone(),
            format!("schedule `{name}`: `jobs` lists no job"),
        );
    }
    // The entry's locks are taken by every site its jobs run on.
    let mut members: Vec<String> = Vec::new();
    for j in &s.jobs {
        for a in jobs
            .get(j)
            .map(|j| j.actions.as_slice())
            .unwrap_or_default()
        {
            for site in known.sites.list(&a.roles, &s.roles) {
                if !members.contains(&site) {
                    members.push(site);
                }
            }
        }
    }
    let owner = format!("schedule `{name}`");
    check_lock_keys(
        c,
        &owner,
        &lock_names_here,
        &members,
        known.locks,
        known.sites,
        locks_span.or(at),
    );
    for lock in &lock_names_here {
        s.locks.push(known.locks[lock].lock.clone());
    }
    if !s.allow_missing_job {
        for j in &s.jobs {
            if !jobs.contains_key(j) {
                c.error(
                    jobs_span.clone(),
                    format!("schedule `{name}` names unknown job `{j}`"),
                );
            }
        }
    }
    s
}
