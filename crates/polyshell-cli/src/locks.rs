//! Locks of the Polyfile (`[locks.NAME]`), and lock kinds a program adds by name.
//!
//! Built in (no `kind`, or `kind = "semaphore"`):
//! - `limit = N`: at most N sites hold it at once (`limit = 1`: a named mutex);
//! - `per = "KEY"`, `limit = N`: one such semaphore per distinct value of the sites' `KEY`
//!   (`dc`); a site without the key is an error at `check`, unless `missing = "skip-lock"`
//!   (it then takes no permit);
//! - `per = "role"`, `limit = N`: one per role (`roles = [...]` to name which; default every
//!   declared role).
//!
//! A program registers its own kinds before it runs the CLI:
//!
//! ```no_run
//! use polyshell_sched::{Guard, Lock, LockContext, Semaphore};
//! use std::sync::Arc;
//!
//! polyshell_cli::locks::register("pair", |spec| {
//!     let _ = spec.fields.get("why"); // free fields of the table, as JSON
//!     Ok(Semaphore::new(2) as Arc<dyn Lock>)
//! });
//! std::process::exit(polyshell_cli::cli::main().into());
//! ```

use polyshell_sched::{labeled, KeySemaphore, Lock, RoleSemaphore, Semaphore};
use polyshell_sites::SiteStore;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A `[locks.NAME]` table for a registered kind: its name and every field but `kind`.
pub struct LockSpec<'a> {
    /// The lock's name in the Polyfile (`[locks.NAME]`).
    pub name: &'a str,
    /// The lock table's keys, `kind` excepted, as JSON.
    pub fields: &'a Map<String, Value>,
    /// The Polyfile's sites (a lock may check their keys).
    pub sites: &'a SiteStore,
}

type Factory = Arc<dyn Fn(&LockSpec<'_>) -> Result<Arc<dyn Lock>, String> + Send + Sync>;

static KINDS: Mutex<BTreeMap<String, Factory>> = Mutex::new(BTreeMap::new());

/// Makes `kind = "NAME"` in a `[locks.X]` table build its lock with `make`. An `Err` from it
/// is reported by `check` (and every command) at the table, with line and column.
pub fn register(
    kind: &str,
    make: impl Fn(&LockSpec<'_>) -> Result<Arc<dyn Lock>, String> + Send + Sync + 'static,
) {
    KINDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(kind.to_owned(), Arc::new(make));
}

fn registered() -> Vec<String> {
    KINDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect()
}

/// What `per = "KEY"` needs of the sites that take the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsKey {
    /// The site key the lock is per (`per = "KEY"`).
    pub key: String,
}

/// A lock of the Polyfile, built.
#[derive(Clone)]
pub struct Declared {
    /// The lock, shared by every job and schedule entry naming it.
    pub lock: Arc<dyn Lock>,
    /// `per = "KEY"` without `missing = "skip-lock"`: every site taking it must have KEY.
    pub needs_key: Option<NeedsKey>,
}

const BUILT_IN_KEYS: &[&str] = &["kind", "limit", "per", "missing", "roles"];

/// Builds the lock `name` from its table's fields (as JSON). Errors say what is wrong.
pub fn build(
    name: &str,
    fields: &Map<String, Value>,
    sites: &SiteStore,
) -> Result<Declared, String> {
    let kind = match fields.get("kind") {
        None => "semaphore",
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err("`kind` must be a string".into()),
    };
    if kind != "semaphore" {
        let factory = KINDS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .cloned();
        let Some(factory) = factory else {
            let mut kinds = vec!["semaphore".to_owned()];
            kinds.extend(registered());
            return Err(format!(
                "unknown lock kind `{kind}` (kinds: {})",
                kinds.join(", ")
            ));
        };
        let mut free = fields.clone();
        free.remove("kind");
        let lock = factory(&LockSpec {
            name,
            fields: &free,
            sites,
        })?;
        return Ok(Declared {
            lock: labeled(name, lock),
            needs_key: None,
        });
    }
    if let Some(other) = fields.keys().find(|k| !BUILT_IN_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{other}` (expected one of: {})",
            BUILT_IN_KEYS.join(", ")
        ));
    }
    let limit = match fields.get("limit") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n >= 1 && n <= u32::MAX as u64 => n as usize,
            _ => return Err("`limit` must be a whole number, at least 1".into()),
        },
        Some(_) => return Err("`limit` must be a whole number, at least 1".into()),
        None => return Err("needs `limit = N` (how many sites may hold it at once)".into()),
    };
    let per = match fields.get("per") {
        None => None,
        Some(Value::String(p)) if !p.is_empty() => Some(p.as_str()),
        Some(_) => return Err("`per` must be a site key (`dc`) or \"role\"".into()),
    };
    let skip_missing = match fields.get("missing") {
        None => false,
        Some(Value::String(m)) if m == "skip-lock" => true,
        Some(Value::String(m)) if m == "error" => false,
        Some(_) => return Err("`missing` must be \"error\" or \"skip-lock\"".into()),
    };
    if fields.contains_key("missing") && matches!(per, None | Some("role")) {
        return Err("`missing` goes with `per = \"KEY\"` only".into());
    }
    if fields.contains_key("roles") && per != Some("role") {
        return Err("`roles` goes with `per = \"role\"` only".into());
    }
    let (lock, needs_key): (Arc<dyn Lock>, _) = match per {
        None => (Semaphore::new(limit), None),
        Some("role") => {
            let roles: Vec<String> = match fields.get("roles") {
                None => sites
                    .role_names()
                    .into_iter()
                    .filter(|r| r != polyshell_sites::ALL && sites.get(r).is_none())
                    .collect(),
                Some(Value::Array(list)) => {
                    let mut roles = Vec::new();
                    for r in list {
                        match r.as_str() {
                            Some(r) if sites.has_role(r) => roles.push(r.to_owned()),
                            Some(r) => return Err(format!("`roles`: no role `{r}`")),
                            None => return Err("`roles` must be a list of role names".into()),
                        }
                    }
                    roles
                }
                Some(_) => return Err("`roles` must be a list of role names".into()),
            };
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            (RoleSemaphore::new(limit, &roles), None)
        }
        Some(key) => (
            KeySemaphore::new(key, limit, skip_missing) as Arc<dyn Lock>,
            (!skip_missing).then(|| NeedsKey {
                key: key.to_owned(),
            }),
        ),
    };
    Ok(Declared {
        lock: labeled(name, lock),
        needs_key,
    })
}
