//! Loading the `[sites]` and `[roles]` tables of a Polyfile into a [`SiteStore`].
//!
//! - A site key may be a host range: `[sites."web[01-20]"]` makes twenty sites.
//! - `roles = [...]` in a site table puts the site in those roles; `{name}` in any string
//!   value becomes the site's name (other `{...}` are left for the steps that use them).
//! - A site named by two keys (two overlapping ranges) merges both tables, unless they set one
//!   key to different values: that is an error.
//! - `[roles.NAME]` tables fill in configuration for every member of the role. A site's own
//!   keys win over role keys (the specific over the general); between roles, the table later
//!   in the file wins. A role table whose role has no sites is an error.
//!
//! Every error carries file, line and column, and all of them are reported together.

use crate::config::{Config, Site};
use crate::diag::{Diagnostic, Diagnostics, Source};
use crate::range;
use crate::store::{SiteStore, ALL};
use serde_json::Value;
use std::collections::HashMap;
use std::ops::Range;
use toml_edit::{ImDocument, Item, Table};

/// Parses `source` as TOML and loads its `[sites]` and `[roles]` tables. Other top-level
/// tables are ignored here (the CLI checks them).
///
/// ```
/// use polyshell_sites::{diag::Source, inventory};
///
/// let source = Source::new("Polyfile.toml", r#"
/// [sites."web[01-03]"]
/// roles = ["web"]
/// host = "{name}.example.com"
/// "#);
/// let sites = inventory::load(&source).unwrap();
/// assert_eq!(sites.list("web", ()), ["web01", "web02", "web03"]);
/// assert_eq!(sites.get("web02").unwrap().host().unwrap(), Some("web02.example.com"));
/// ```
pub fn load(source: &Source) -> Result<SiteStore, Diagnostics> {
    let doc = ImDocument::parse(source.text()).map_err(|err| {
        Diagnostics(vec![
            source.error(err.span(), format!("invalid TOML: {}", err.message()))
        ])
    })?;
    let store = SiteStore::new();
    let mut diags = Vec::new();
    load_tables(source, doc.as_table(), &store, &mut diags);
    if diags.is_empty() {
        Ok(store)
    } else {
        Err(Diagnostics(diags))
    }
}

/// Loads the `sites` and `roles` tables of an already parsed document into `store`, adding
/// a diagnostic for every error.
pub fn load_tables(source: &Source, root: &Table, store: &SiteStore, diags: &mut Vec<Diagnostic>) {
    let mut own_keys: HashMap<String, Origin> = HashMap::new();
    if let Some(item) = root.get("sites") {
        match item.as_table() {
            Some(sites) => load_sites(source, sites, store, &mut own_keys, diags),
            None => diags.push(source.error(item.span(), "`sites` must be a table of sites")),
        }
    }
    if let Some(item) = root.get("roles") {
        match item.as_table() {
            Some(roles) => load_roles(source, roles, store, &own_keys, diags),
            None => diags.push(source.error(item.span(), "`roles` must be a table of roles")),
        }
    }
}

/// Which key defined a site, and the configuration that key gave it.
struct Origin {
    key: String,
    line: usize,
    config: Config,
}

fn key_span(table: &Table, key: &str) -> Option<Range<usize>> {
    table.key(key).and_then(|k| k.span())
}

fn load_sites(
    source: &Source,
    sites: &Table,
    store: &SiteStore,
    origins: &mut HashMap<String, Origin>,
    diags: &mut Vec<Diagnostic>,
) {
    for (key, item) in sites.iter() {
        let span = key_span(sites, key);
        let names = match range::expand(key) {
            Ok(names) => names,
            Err(err) => {
                let start = span.clone().map(|s| {
                    // A quoted key's text starts one byte after its span.
                    let quoted = source.text().get(s.start..s.start + 1) == Some("\"");
                    s.start + usize::from(quoted) + err.offset
                });
                diags.push(source.error(
                    start.map(|s| s..s),
                    format!("site `{key}`: {}", err.message),
                ));
                continue;
            }
        };
        if names.iter().any(|n| n == ALL) {
            diags.push(source.error(
                span.clone(),
                "`all` is the role of every site; it cannot name a site",
            ));
            continue;
        }
        let Some(table) = item.as_table() else {
            diags.push(source.error(
                item.span().or(span),
                format!("site `{key}` must be a table"),
            ));
            continue;
        };
        let (roles, config) = site_table(source, key, table, diags);
        let (line, _) = source.position(span.clone().map(|s| s.start).unwrap_or(0));
        for name in &names {
            let config = substitute_name(&config, name);
            if let Some(first) = origins.get_mut(name) {
                let clash: Vec<&String> = config
                    .iter()
                    .filter(|(k, v)| first.config.get(*k).is_some_and(|f| f != *v))
                    .map(|(k, _)| k)
                    .collect();
                if let Some(k) = clash.first() {
                    diags.push(source.error(
                        key_span(table, k).or(span.clone()),
                        format!(
                            "site `{name}` is defined by `{}` (line {}) and by `{key}` with a different `{k}`",
                            first.key, first.line
                        ),
                    ));
                    continue;
                }
                first.config.extend(config.clone());
            } else {
                origins.insert(
                    name.clone(),
                    Origin {
                        key: key.to_owned(),
                        line,
                        config: config.clone(),
                    },
                );
            }
            store.add(name, &roles, Value::Object(config));
        }
    }
}

/// The roles and configuration of one site table, type-checked.
fn site_table(
    source: &Source,
    site: &str,
    table: &Table,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<String>, Config) {
    let mut roles = Vec::new();
    let mut config = Config::new();
    for (key, item) in table.iter() {
        let span = item.span().or_else(|| key_span(table, key));
        match key {
            "roles" => match roles_list(item) {
                Some(list) => roles = list,
                None => diags.push(source.error(
                    span,
                    format!("site `{site}`: `roles` must be a list of role names"),
                )),
            },
            "name" => diags.push(source.error(
                key_span(table, key),
                format!("site `{site}`: `name` is always the site's own name and cannot be set"),
            )),
            _ => {
                if let Some(value) =
                    checked_value(source, &format!("site `{site}`"), key, item, span, diags)
                {
                    config.insert(key.to_owned(), value);
                }
            }
        }
    }
    (roles, config)
}

fn roles_list(item: &Item) -> Option<Vec<String>> {
    item.as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn load_roles(
    source: &Source,
    roles: &Table,
    store: &SiteStore,
    own: &HashMap<String, Origin>,
    diags: &mut Vec<Diagnostic>,
) {
    for (role, item) in roles.iter() {
        let span = key_span(roles, role);
        let Some(table) = item.as_table() else {
            diags.push(source.error(
                item.span().or(span),
                format!("role `{role}` must be a table"),
            ));
            continue;
        };
        let members = store.list(role, ());
        if members.is_empty() {
            diags.push(source.error(
                span,
                format!("role `{role}` has no sites: no site lists it in `roles` and no site is called `{role}`"),
            ));
            continue;
        }
        let mut config = Config::new();
        for (key, item) in table.iter() {
            let span = item.span().or_else(|| key_span(table, key));
            if key == "roles" || key == "name" {
                diags.push(source.error(
                    key_span(table, key),
                    format!("role `{role}`: `{key}` cannot be set on a role"),
                ));
                continue;
            }
            if let Some(value) =
                checked_value(source, &format!("role `{role}`"), key, item, span, diags)
            {
                config.insert(key.to_owned(), value);
            }
        }
        for member in members {
            let own_config = own.get(&member).map(|o| &o.config);
            let mut fill = Config::new();
            for (key, value) in &config {
                if own_config.is_some_and(|c| c.contains_key(key)) {
                    continue; // the site's own key wins
                }
                fill.insert(key.clone(), value.clone());
            }
            store.add(&member, (), Value::Object(substitute_name(&fill, &member)));
        }
    }
}

pub use crate::config::KNOWN_SITE_KEYS;

/// Site and role keys that look like a mistyped key Polyshell reads (`hots` for `host`):
/// free-form keys are allowed, so these are warnings, each with its position and the key it
/// probably meant. A mistyped `host` would otherwise make a remote site silently local.
pub fn near_misses(source: &Source) -> Vec<Diagnostic> {
    let Ok(doc) = toml_edit::ImDocument::parse(source.text()) else {
        return Vec::new(); // `load` reports the syntax error
    };
    let mut found = Vec::new();
    for section in ["sites", "roles"] {
        let Some(tables) = doc.get(section).and_then(Item::as_table_like) else {
            continue;
        };
        for (name, item) in tables.iter() {
            let Some(table) = item.as_table_like() else {
                continue;
            };
            for (key, _) in table.iter() {
                if KNOWN_SITE_KEYS.contains(&key) {
                    continue;
                }
                let meant = KNOWN_SITE_KEYS.iter().find(|known| {
                    let limit = if known.len() <= 4 { 1 } else { 2 };
                    key.eq_ignore_ascii_case(known)
                        || strsim::damerau_levenshtein(key, known) <= limit
                });
                if let Some(meant) = meant {
                    let span = table.key(key).and_then(|k| k.span());
                    let owner = if section == "sites" { "site" } else { "role" };
                    found.push(source.error(
                        span,
                        format!(
                            "{owner} `{name}`: `{key}` is not a key Polyshell reads; \
                             did you mean `{meant}`? (other keys are free-form configuration)"
                        ),
                    ));
                }
            }
        }
    }
    found
}

/// Converts a TOML item to a JSON value, checking the types of the keys Polyshell reads.
fn checked_value(
    source: &Source,
    owner: &str,
    key: &str,
    item: &Item,
    span: Option<Range<usize>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let value = match to_json(item) {
        Ok(v) => v,
        Err(why) => {
            diags.push(source.error(span, format!("{owner}: `{key}`: {why}")));
            return None;
        }
    };
    // The accessor the run reads the key with decides (one rule for `check` and the run).
    let one = Site::new(owner, [(key.to_owned(), value)].into_iter().collect());
    match one.check_key(key) {
        Some(Err(e)) => {
            diags.push(source.error(
                span,
                format!(
                    "{owner}: `{}` must be {}, not {}",
                    e.key, e.expected, e.found
                ),
            ));
            None
        }
        _ => Some(one.into_config().into_iter().next()?.1),
    }
}

/// A TOML item as JSON (the form site configuration takes); a non-finite float is an error.
pub fn to_json(item: &Item) -> Result<Value, String> {
    match item {
        Item::None => Ok(Value::Null),
        Item::Value(v) => value_to_json(v),
        Item::Table(t) => t
            .iter()
            .map(|(k, v)| Ok((k.to_owned(), to_json(v)?)))
            .collect::<Result<Config, String>>()
            .map(Value::Object),
        Item::ArrayOfTables(a) => a
            .iter()
            .map(|t| to_json(&Item::Table(t.clone())))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
    }
}

fn value_to_json(v: &toml_edit::Value) -> Result<Value, String> {
    use toml_edit::Value as T;
    Ok(match v {
        T::String(s) => Value::String(s.value().clone()),
        T::Integer(i) => Value::from(*i.value()),
        T::Float(f) => serde_json::Number::from_f64(*f.value())
            .map(Value::Number)
            .ok_or("not a finite number")?,
        T::Boolean(b) => Value::Bool(*b.value()),
        T::Datetime(d) => Value::String(d.value().to_string()),
        T::Array(a) => Value::Array(a.iter().map(value_to_json).collect::<Result<_, _>>()?),
        T::InlineTable(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.to_owned(), value_to_json(v)?)))
                .collect::<Result<Config, String>>()?,
        ),
    })
}

fn substitute_name(config: &Config, name: &str) -> Config {
    fn walk(value: &Value, name: &str) -> Value {
        match value {
            Value::String(s) if s.contains("{name}") => Value::String(s.replace("{name}", name)),
            Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, name)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), walk(v, name)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    config
        .iter()
        .map(|(k, v)| (k.clone(), walk(v, name)))
        .collect()
}
