//! `{...}` substitution in steps: `{name}`, `{host}`, `{batch}`, `{site.KEY}`,
//! `{sites.SITE.KEY}`, `{shared.KEY}` (this site's), `{shared.SITE.KEY}`. In commands a value
//! is quoted as one word of data for the shell, never spliced in as code; `{raw:...}` opts out.
//!
//! Only `{` + a lowercase name + `}` is a placeholder, and not after `$`: `${HOME}`,
//! `awk '{print $1}'`, `find -exec {} +` and `{a,b}` stay as they are.

use polyshell_sched::Shared;
use polyshell_shell::quote;
use polyshell_sites::{Site, SiteStore, Value};

/// Placeholders in `text`: (byte offset of the `{`, what is inside).
pub fn placeholders(text: &str) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' && (i == 0 || bytes[i - 1] != b'$') {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len()
                && (bytes[j].is_ascii_lowercase()
                    || (j > start
                        && (bytes[j].is_ascii_alphanumeric() || b"_.:-".contains(&bytes[j]))))
            {
                j += 1;
            }
            if j > start && j < bytes.len() && bytes[j] == b'}' {
                found.push((i, text[start..j].to_owned()));
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    found
}

const EXPECTED: &str =
    "expected name, host, batch, site.KEY, sites.SITE.KEY, shared.KEY or shared.SITE.KEY";

/// Whether `placeholder` names something for every site in `members`; `sets` are the keys
/// that steps put into the shared space.
pub fn check(
    placeholder: &str,
    sites: &SiteStore,
    members: &[String],
    sets: &[String],
) -> Result<(), String> {
    let inner = placeholder.strip_prefix("raw:").unwrap_or(placeholder);
    let parts: Vec<&str> = inner.split('.').collect();
    match parts.as_slice() {
        ["name"] | ["batch"] => Ok(()),
        ["host"] => match members.iter().find(|m| {
            sites
                .get(m)
                .is_some_and(|s| s.host().ok().flatten().is_none())
        }) {
            Some(local) => Err(format!("names nothing: site `{local}` has no host")),
            None => Ok(()),
        },
        ["site", key] => match members
            .iter()
            .find(|m| sites.get(m).is_some_and(|s| !s.config().contains_key(*key)))
        {
            Some(site) => Err(format!("names nothing: site `{site}` has no `{key}`")),
            None => Ok(()),
        },
        ["sites", site, key] => match sites.get(site) {
            None => Err(format!("names nothing: there is no site `{site}`")),
            Some(s) if !s.config().contains_key(*key) => {
                Err(format!("names nothing: site `{site}` has no `{key}`"))
            }
            Some(_) => Ok(()),
        },
        ["shared", key] | ["shared", _, key] => {
            if sets.iter().any(|s| s == key) {
                Ok(())
            } else {
                Err(format!("names nothing: no step has `set = \"{key}\"`"))
            }
        }
        _ => Err(format!("names nothing ({EXPECTED})")),
    }
}

/// What substitution reads from.
pub struct Scope<'a> {
    pub site: &'a Site,
    pub sites: &'a SiteStore,
    pub batch: &'a str,
    pub shared: &'a Shared,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn lookup(placeholder: &str, scope: &Scope<'_>) -> Result<String, String> {
    let parts: Vec<&str> = placeholder.split('.').collect();
    let missing = || {
        format!(
            "`{{{placeholder}}}` names nothing on site `{}`",
            scope.site.name()
        )
    };
    match parts.as_slice() {
        ["name"] => Ok(scope.site.name().to_owned()),
        ["batch"] => Ok(scope.batch.to_owned()),
        ["host"] => scope
            .site
            .host()
            .ok()
            .flatten()
            .map(str::to_owned)
            .ok_or_else(missing),
        ["site", key] => scope
            .site
            .config()
            .get(*key)
            .map(text_of)
            .ok_or_else(missing),
        ["sites", site, key] => scope
            .sites
            .get(site)
            .and_then(|s| s.config().get(*key).map(text_of))
            .ok_or_else(missing),
        ["shared", key] => shared_value(scope, scope.site.name(), key).ok_or_else(missing),
        ["shared", site, key] => shared_value(scope, site, key).ok_or_else(missing),
        _ => Err(missing()),
    }
}

fn shared_value(scope: &Scope<'_>, site: &str, key: &str) -> Option<String> {
    scope.shared.get(site)?.get(key).map(text_of)
}

/// Replaces every placeholder in `text`. With `quote_values`, each value becomes one quoted
/// shell word (except `{raw:...}`).
pub fn substitute(text: &str, scope: &Scope<'_>, quote_values: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (offset, placeholder) in placeholders(text) {
        out.push_str(&text[last..offset]);
        let (raw, name) = match placeholder.strip_prefix("raw:") {
            Some(inner) => (true, inner),
            None => (false, placeholder.as_str()),
        };
        let value = lookup(name, scope)?;
        if quote_values && !raw {
            out.push_str(&quote(&value));
        } else {
            out.push_str(&value);
        }
        last = offset + placeholder.len() + 2;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyshell_sites::json;

    #[test]
    fn only_real_placeholders_are_found() {
        let text = "echo {name} ${HOME} {} {a,b} awk '{print $1}' {site.dir} {raw:site.x} {Name}";
        let found: Vec<String> = placeholders(text).into_iter().map(|(_, p)| p).collect();
        assert_eq!(found, ["name", "site.dir", "raw:site.x"]);
    }

    #[test]
    fn values_are_quoted_as_data() {
        let sites = SiteStore::new();
        sites.add(
            "web1",
            (),
            json!({"evil": "x'; rm -rf / #$(id)", "host": "h1"}),
        );
        let site = sites.get("web1").unwrap();
        let shared = Shared::default();
        shared.set("web1", json!({"rev": "abc123"}));
        let scope = Scope {
            site: &site,
            sites: &sites,
            batch: "b1",
            shared: &shared,
        };
        let cmd = substitute(
            "echo {site.evil} {name}@{host} {shared.rev} {raw:site.host}",
            &scope,
            true,
        )
        .unwrap();
        let words = shlex::split(&cmd).unwrap();
        assert_eq!(
            words,
            ["echo", "x'; rm -rf / #$(id)", "web1@h1", "abc123", "h1"]
        );
        assert!(substitute("{site.nope}", &scope, true).is_err());
    }
}
