//! The concurrent site/role store, with the original Polyshell's `add` / `get` / `list` /
//! `update` semantics.

use crate::config::{Config, Site, Values};
use dashmap::DashMap;
use serde_json::Value;
use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One name or several: what `add`, `list` and `update` take for sites and roles, as the
/// original took a string or an array. `()` is none.
pub trait Names {
    /// The names.
    fn to_names(&self) -> Vec<String>;
}

impl Names for () {
    fn to_names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Names for str {
    fn to_names(&self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl Names for String {
    fn to_names(&self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl<S: AsRef<str>> Names for [S] {
    fn to_names(&self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_owned()).collect()
    }
}

impl<S: AsRef<str>, const N: usize> Names for [S; N] {
    fn to_names(&self) -> Vec<String> {
        self.as_slice().to_names()
    }
}

impl<S: AsRef<str>> Names for Vec<S> {
    fn to_names(&self) -> Vec<String> {
        self.as_slice().to_names()
    }
}

impl<T: Names + ?Sized> Names for &T {
    fn to_names(&self) -> Vec<String> {
        (**self).to_names()
    }
}

/// The role that holds every site.
pub const ALL: &str = "all";

/// Sites and roles, shared across tasks (`Clone` shares the same store).
///
/// ```
/// use polyshell_sites::SiteStore;
/// use serde_json::json;
///
/// let sites = SiteStore::new();
/// sites.add(["app1", "app2"], "app", json!({"admin": "ops@example.com"}));
/// sites.update("app", (), json!({"port": 2222}));
/// assert_eq!(sites.list("app", ()), ["app1", "app2"]);
/// assert_eq!(sites.get("app2").unwrap().config()["port"], 2222);
/// ```
#[derive(Clone, Default)]
pub struct SiteStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    sites: DashMap<String, SiteEntry>,
    roles: DashMap<String, RoleEntry>,
    next_seq: AtomicU64,
}

struct SiteEntry {
    /// Order of addition: `list` sorts by it.
    seq: u64,
    config: Config,
    values: Values,
    /// The roles the site joined besides its own name's (the reverse of `roles`), so
    /// `roles_of` costs the site's own roles, not a scan of every role (every site is a
    /// role: that scan was O(sites)). Kept here, not in a map of its own, so a site's name
    /// is not stored once more.
    roles: BTreeSet<String>,
}

#[derive(Default)]
struct RoleEntry {
    members: HashSet<String>,
}

impl std::fmt::Debug for SiteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteStore")
            .field("sites", &self.inner.sites.len())
            .field("roles", &self.inner.roles.len())
            .finish()
    }
}

impl SiteStore {
    /// An empty store.
    pub fn new() -> SiteStore {
        SiteStore::default()
    }

    /// Creates or updates each site of `names`, adds it to `roles` (and to the role of its
    /// own name), and shallow-merges `config` into the site's own copy: top-level keys
    /// overwrite, nested values are replaced whole. `name` always equals the site's name.
    /// A `config` that is not an object merges nothing.
    pub fn add(&self, names: impl Names, roles: impl Names, config: Value) {
        let (names, roles) = (names.to_names(), roles.to_names());
        let config = match config {
            Value::Object(map) => map,
            _ => Config::new(),
        };
        for name in &names {
            let name = name.as_str();
            {
                let mut entry =
                    self.inner
                        .sites
                        .entry(name.to_owned())
                        .or_insert_with(|| SiteEntry {
                            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
                            config: Config::new(),
                            values: Values::default(),
                            roles: BTreeSet::new(),
                        });
                for (key, value) in &config {
                    entry.config.insert(key.clone(), value.clone());
                }
                entry
                    .config
                    .insert("name".into(), Value::String(name.to_owned()));
            } // the site's lock is released before the roles map is touched
            self.join(name, name);
            for role in &roles {
                self.join(role, name);
            }
        }
    }

    fn join(&self, role: &str, site: &str) {
        if role == ALL {
            return; // implicit: every site is in it
        }
        self.inner
            .roles
            .entry(role.to_owned())
            .or_default()
            .members
            .insert(site.to_owned());
        if role != site {
            if let Some(mut entry) = self.inner.sites.get_mut(site) {
                entry.roles.insert(role.to_owned());
            }
        }
    }

    /// A copy of the site called `name`; changing it changes nothing stored. A role that is
    /// not also a site is `None`.
    pub fn get(&self, name: &str) -> Option<Site> {
        self.inner.sites.get(name).map(|entry| Site {
            name: name.to_owned(),
            config: entry.config.clone(),
            values: entry.values.clone(),
        })
    }

    /// The names of the sites in any of `roles` and, when `filter` is not empty, also in any
    /// of `filter`; without duplicates, in order of addition. The role `all` holds every site.
    pub fn list(&self, roles: impl Names, filter: impl Names) -> Vec<String> {
        let (roles, filter) = (roles.to_names(), filter.to_names());
        let members = self.members(&roles);
        let keep: Option<HashSet<String>> =
            (!filter.is_empty()).then(|| self.members(&filter).into_iter().collect());
        let mut found: Vec<(u64, String)> = members
            .into_iter()
            .filter(|name| keep.as_ref().is_none_or(|k| k.contains(name)))
            .filter_map(|name| {
                let seq = self.inner.sites.get(&name)?.seq;
                Some((seq, name))
            })
            .collect();
        found.sort_unstable_by_key(|(seq, _)| *seq);
        found.into_iter().map(|(_, name)| name).collect()
    }

    fn members(&self, roles: &[String]) -> HashSet<String> {
        if roles.iter().any(|r| r == ALL) {
            return self.inner.sites.iter().map(|e| e.key().clone()).collect();
        }
        let mut set = HashSet::new();
        for role in roles {
            if let Some(entry) = self.inner.roles.get(role) {
                set.extend(entry.members.iter().cloned());
            }
        }
        set
    }

    /// The sites a host pattern names, in order of addition: `@ROLE` is the role's sites
    /// (`@all` and `@*` every site), a plain name a site or a role, and the operators of
    /// [`range`](crate::range) combine them (`@web!web03`, `@web&@eu`, `db[1-3],cache`).
    /// A name that is neither a site nor a role is an error listing the roles.
    ///
    /// ```
    /// use polyshell_sites::{json, SiteStore};
    /// let sites = SiteStore::new();
    /// sites.add(["web1", "web2", "web3"], "web", json!({}));
    /// sites.add(["web1", "db1"], "eu", json!({}));
    /// assert_eq!(sites.select("@web!web2").unwrap(), ["web1", "web3"]);
    /// assert_eq!(sites.select("@web&@eu").unwrap(), ["web1"]);
    /// assert_eq!(sites.select("eu,web3").unwrap(), ["web1", "web3", "db1"]);
    /// assert!(sites.select("@nope").unwrap_err().message.contains("roles: eu, web"));
    /// ```
    pub fn select(&self, pattern: &str) -> Result<Vec<String>, crate::range::RangeError> {
        struct Targets<'a>(&'a SiteStore);
        impl crate::range::Groups for Targets<'_> {
            fn group(&self, name: &str) -> Result<Vec<String>, String> {
                self.0.group(name)
            }
            fn name(&self, name: &str) -> Result<Vec<String>, String> {
                if self.0.has_role(name) {
                    Ok(self.0.list(name, ()))
                } else {
                    Err(format!(
                        "`{name}` is neither a role nor a site (roles: {})",
                        self.0.group_names().join(", ")
                    ))
                }
            }
        }
        let names = crate::range::expand_with(pattern, &Targets(self))?;
        Ok(self.list(names, ()))
    }

    /// The role names that are not only a site's own name, sorted: what `@ROLE` is for.
    pub fn group_names(&self) -> Vec<String> {
        let mut roles: Vec<String> = self
            .inner
            .roles
            .iter()
            .filter(|r| !(r.members.len() == 1 && r.members.contains(r.key())))
            .map(|r| r.key().clone())
            .collect();
        roles.sort();
        roles
    }

    /// `add(list(in_roles), roles, config)`: updates the sites already in `in_roles`,
    /// creating none.
    pub fn update(&self, in_roles: impl Names, roles: impl Names, config: Value) {
        let names = self.list(in_roles, ());
        self.add(names, roles, config);
    }

    /// Whether `role` names a role with at least one site (every site is a role of itself).
    pub fn has_role(&self, role: &str) -> bool {
        role == ALL && !self.inner.sites.is_empty()
            || self
                .inner
                .roles
                .get(role)
                .is_some_and(|r| !r.members.is_empty())
    }

    /// The roles `site` is in (its own name included), sorted.
    pub fn roles_of(&self, site: &str) -> Vec<String> {
        let Some(entry) = self.inner.sites.get(site) else {
            return Vec::new();
        };
        let mut roles: Vec<String> = entry.roles.iter().cloned().collect();
        // Its own name's role, in its sorted place.
        if self.inner.roles.contains_key(site) {
            let at = roles.partition_point(|r| r.as_str() < site);
            roles.insert(at, site.to_owned());
        }
        roles
    }

    /// Every role name, sorted (the implicit `all` excluded).
    pub fn role_names(&self) -> Vec<String> {
        let mut roles: Vec<String> = self.inner.roles.iter().map(|r| r.key().clone()).collect();
        roles.sort();
        roles
    }

    /// How many sites there are.
    pub fn len(&self) -> usize {
        self.inner.sites.len()
    }

    /// Whether there are no sites.
    pub fn is_empty(&self) -> bool {
        self.inner.sites.is_empty()
    }

    /// Attaches a typed value that is not configuration data (a notifier, a lock, a client
    /// handle) to every current member of `roles`; read back with [`Site::value`]. One value
    /// per type and site: a later one replaces it.
    pub fn put_value<T: Any + Send + Sync>(&self, roles: impl Names, value: T) {
        let value: Arc<dyn Any + Send + Sync> = Arc::new(value);
        for name in self.list(roles, ()) {
            if let Some(mut entry) = self.inner.sites.get_mut(&name) {
                entry.values.insert(TypeId::of::<T>(), value.clone());
            }
        }
    }
}

/// `@ROLE` in host patterns: the role's sites; `@all` (and `@*`) every site. A role with no
/// site is an error listing the roles.
impl crate::range::Groups for SiteStore {
    fn group(&self, name: &str) -> Result<Vec<String>, String> {
        if name == ALL || self.has_role(name) {
            Ok(self.list(name, ()))
        } else {
            Err(format!(
                "no role `{name}` (roles: {})",
                self.group_names().join(", ")
            ))
        }
    }
}
