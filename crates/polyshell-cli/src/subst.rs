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

/// What a placeholder refers to. A site's name may hold dots (every FQDN from `-H`): in
/// `sites.SITE.KEY` and `shared.SITE.KEY` the key is the last part and the site all between.
#[derive(Debug, PartialEq)]
enum Ref<'a> {
    Name,
    Batch,
    Host,
    Site(&'a str),
    Sites(&'a str, &'a str),
    Shared(&'a str),
    SharedOf(&'a str, &'a str),
    Unknown,
}

fn parse(placeholder: &str) -> Ref<'_> {
    let (head, rest) = placeholder.split_once('.').unwrap_or((placeholder, ""));
    match (head, rest) {
        ("name", "") => Ref::Name,
        ("batch", "") => Ref::Batch,
        ("host", "") => Ref::Host,
        ("site", key) if !key.is_empty() && !key.contains('.') => Ref::Site(key),
        ("sites", rest) => match rest.rsplit_once('.') {
            Some((site, key)) if !site.is_empty() && !key.is_empty() => Ref::Sites(site, key),
            _ => Ref::Unknown,
        },
        ("shared", rest) if !rest.is_empty() => match rest.rsplit_once('.') {
            Some((site, key)) if !site.is_empty() && !key.is_empty() => Ref::SharedOf(site, key),
            Some(_) => Ref::Unknown,
            None => Ref::Shared(rest),
        },
        _ => Ref::Unknown,
    }
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
    match parse(inner) {
        Ref::Name | Ref::Batch => Ok(()),
        Ref::Host => match members.iter().find(|m| {
            sites
                .get(m)
                .is_some_and(|s| s.host().ok().flatten().is_none())
        }) {
            Some(local) => Err(format!("names nothing: site `{local}` has no host")),
            None => Ok(()),
        },
        Ref::Site(key) => match members
            .iter()
            .find(|m| sites.get(m).is_some_and(|s| !s.config().contains_key(key)))
        {
            Some(site) => Err(format!("names nothing: site `{site}` has no `{key}`")),
            None => Ok(()),
        },
        Ref::Sites(site, key) => match sites.get(site) {
            None => Err(format!("names nothing: there is no site `{site}`")),
            Some(s) if !s.config().contains_key(key) => {
                Err(format!("names nothing: site `{site}` has no `{key}`"))
            }
            Some(_) => Ok(()),
        },
        Ref::Shared(key) | Ref::SharedOf(_, key) => {
            if sets.iter().any(|s| s == key) {
                Ok(())
            } else {
                Err(format!("names nothing: no step has `set = \"{key}\"`"))
            }
        }
        Ref::Unknown => Err(format!("names nothing ({EXPECTED})")),
    }
}

/// What substitution reads from.
pub struct Scope<'a> {
    /// The site the step runs on.
    pub site: &'a Site,
    /// Every site (for `{sites.SITE.KEY}`).
    pub sites: &'a SiteStore,
    /// The run's id (`{batch}`).
    pub batch: &'a str,
    /// The run's shared space (`{shared.KEY}`).
    pub shared: &'a Shared,
    /// A dry run: `{batch}` and `{shared...}` (known only when the run is on) are left as
    /// they are written.
    pub dry_run: bool,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn lookup(placeholder: &str, scope: &Scope<'_>) -> Result<String, String> {
    let missing = || {
        format!(
            "`{{{placeholder}}}` names nothing on site `{}`",
            scope.site.name()
        )
    };
    match parse(placeholder) {
        Ref::Name => Ok(scope.site.name().to_owned()),
        Ref::Batch => Ok(scope.batch.to_owned()),
        Ref::Host => scope
            .site
            .host()
            .ok()
            .flatten()
            .map(str::to_owned)
            .ok_or_else(missing),
        Ref::Site(key) => scope
            .site
            .config()
            .get(key)
            .map(text_of)
            .ok_or_else(missing),
        Ref::Sites(site, key) => scope
            .sites
            .get(site)
            .and_then(|s| s.config().get(key).map(text_of))
            .ok_or_else(missing),
        Ref::Shared(key) => shared_value(scope, scope.site.name(), key).ok_or_else(missing),
        Ref::SharedOf(site, key) => shared_value(scope, site, key).ok_or_else(missing),
        Ref::Unknown => Err(missing()),
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
        if scope.dry_run && matches!(parse(name), Ref::Batch | Ref::Shared(_) | Ref::SharedOf(..)) {
            out.push('{');
            out.push_str(&placeholder);
            out.push('}');
            last = offset + placeholder.len() + 2;
            continue;
        }
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
    fn site_names_may_hold_dots() {
        assert_eq!(
            parse("sites.web1.example.com.port"),
            Ref::Sites("web1.example.com", "port")
        );
        assert_eq!(
            parse("shared.db.eu.example.org.rev"),
            Ref::SharedOf("db.eu.example.org", "rev")
        );
        assert_eq!(parse("shared.rev"), Ref::Shared("rev"));
        assert_eq!(parse("site.a.b"), Ref::Unknown);
        assert_eq!(parse("sites.x"), Ref::Unknown);
        let sites = SiteStore::new();
        sites.add("web1.example.com", (), json!({"port": 8080}));
        let site = sites.get("web1.example.com").unwrap();
        let shared = Shared::default();
        shared.set("web1.example.com", json!({"rev": "abc"}));
        let scope = Scope {
            site: &site,
            sites: &sites,
            batch: "b",
            shared: &shared,
            dry_run: false,
        };
        assert_eq!(
            substitute(
                "{sites.web1.example.com.port} {shared.web1.example.com.rev}",
                &scope,
                true
            )
            .unwrap(),
            "8080 abc"
        );
        let members = vec!["web1.example.com".to_owned()];
        assert_eq!(
            check("sites.web1.example.com.port", &sites, &members, &[]),
            Ok(())
        );
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
            dry_run: false,
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
