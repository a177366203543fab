//! A site: its name, its configuration (a JSON-like map) with typed accessors for the keys
//! Polyshell itself reads, and typed values that are not data.

use serde_json::Value;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A site's configuration: nested maps, lists, strings, numbers, booleans.
pub type Config = serde_json::Map<String, Value>;

/// Typed values attached to a site, by type.
pub(crate) type Values = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

/// A key of a site's configuration holds a value of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("site `{site}`: `{key}` must be {expected}, not {found}")]
pub struct ConfigError {
    /// The site.
    pub site: String,
    /// The key with the wrong value.
    pub key: String,
    /// What the key takes.
    pub expected: &'static str,
    /// What it holds.
    pub found: String,
}

/// A copy of one site, as [`SiteStore::get`](crate::SiteStore::get) returns it.
#[derive(Clone)]
pub struct Site {
    pub(crate) name: String,
    pub(crate) config: Config,
    pub(crate) values: Values,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("values", &self.values.len())
            .finish()
    }
}

impl PartialEq for Site {
    fn eq(&self, other: &Site) -> bool {
        self.name == other.name && self.config == other.config
    }
}

/// What a value is, for error messages: a number shows itself, anything else its type.
pub fn type_name(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}

impl Site {
    /// A site that is in no store, e.g. for a one-off shell.
    pub fn new(name: &str, config: Config) -> Site {
        let mut config = config;
        config.insert("name".into(), Value::String(name.to_owned()));
        Site {
            name: name.to_owned(),
            config,
            values: Values::default(),
        }
    }

    /// The site's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole configuration (with `name`).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Consumes the site, keeping its configuration.
    pub fn into_config(self) -> Config {
        self.config
    }

    /// The typed value of type `T` attached with
    /// [`SiteStore::put_value`](crate::SiteStore::put_value).
    pub fn value<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.clone().downcast::<T>().ok())
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError {
            site: self.name.clone(),
            key: key.to_owned(),
            expected,
            found: type_name(found),
        }
    }

    /// A string key, absent or `null` as `None`.
    pub fn string(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    /// `host`: the SSH host; a site without one is local.
    pub fn host(&self) -> Result<Option<&str>, ConfigError> {
        self.string("host")
    }

    /// `user`: the SSH login name.
    pub fn user(&self) -> Result<Option<&str>, ConfigError> {
        self.string("user")
    }

    /// `identity`: an SSH private key file.
    pub fn identity(&self) -> Result<Option<&str>, ConfigError> {
        self.string("identity")
    }

    /// `sh`: the shell program that runs commands (`sh` by default).
    pub fn sh(&self) -> Result<Option<&str>, ConfigError> {
        self.string("sh")
    }

    /// `cwd`: the working directory of commands.
    pub fn cwd(&self) -> Result<Option<&str>, ConfigError> {
        self.string("cwd")
    }

    /// `password_agent`: the name of the sudo password agent this site shares.
    pub fn password_agent(&self) -> Result<Option<&str>, ConfigError> {
        self.string("password_agent")
    }

    /// `port`: the SSH port, a number from 1 to 65535.
    pub fn port(&self) -> Result<Option<u16>, ConfigError> {
        match self.config.get("port") {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .map(Some)
                .ok_or_else(|| self.wrong("port", "a port number from 1 to 65535", v)),
            Some(other) => Err(self.wrong("port", "a port number from 1 to 65535", other)),
        }
    }

    /// A duration in seconds (integer or fractional), e.g. `timeout`, `connect_timeout`, by
    /// the rules of [`duration_from_seconds`].
    pub fn seconds(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Number(n)) => n
                .as_f64()
                .and_then(|s| duration_from_seconds(s).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key, SECONDS_RULE, v)),
            Some(other) => Err(self.wrong(key, SECONDS_RULE, other)),
        }
    }

    /// `timeout`: how long one command may run.
    pub fn timeout(&self) -> Result<Option<Duration>, ConfigError> {
        self.seconds("timeout")
    }

    /// `connect_timeout`: how long connecting and the SSH handshake may take.
    pub fn connect_timeout(&self) -> Result<Option<Duration>, ConfigError> {
        self.seconds("connect_timeout")
    }

    /// `proxy_jump`: the bastion(s) in front of the site, as OpenSSH's `ProxyJump`.
    pub fn proxy_jump(&self) -> Result<Option<&str>, ConfigError> {
        self.string("proxy_jump")
    }

    /// `ssh`: the SSH client. Absent or `false`: libssh2 (`None`); `true`: the system `ssh`;
    /// a string: that program (an OpenSSH-compatible client).
    pub fn ssh_program(&self) -> Result<Option<&str>, ConfigError> {
        const RULE: &str = "`true`, `false` or the name of an ssh program";
        match self.config.get("ssh") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
            Some(Value::Bool(true)) => Ok(Some("ssh")),
            Some(Value::String(p)) if !p.trim().is_empty() => Ok(Some(p)),
            Some(other) => Err(self.wrong("ssh", RULE, other)),
        }
    }

    /// `args`: more arguments for the system `ssh` (with `ssh`): a list of strings, or one
    /// string split as a POSIX shell would.
    pub fn ssh_args(&self) -> Result<Vec<String>, ConfigError> {
        const RULE: &str = "a list of strings, or one string of shell words";
        match self.config.get("args") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v @ Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.wrong("args", RULE, v)),
            Some(v @ Value::String(s)) => {
                shlex::split(s).ok_or_else(|| self.wrong("args", RULE, v))
            }
            Some(other) => Err(self.wrong("args", RULE, other)),
        }
    }

    /// Checks `key` by the accessor the run reads it with, so that what `check` accepts is
    /// exactly what a run applies. `None` for a key Polyshell does not read (free-form
    /// configuration); [`KNOWN_SITE_KEYS`] lists the others.
    pub fn check_key(&self, key: &str) -> Option<Result<(), ConfigError>> {
        Some(match key {
            "host" => self.host().map(drop),
            "user" => self.user().map(drop),
            "port" => self.port().map(drop),
            "identity" => self.identity().map(drop),
            "sh" => self.sh().map(drop),
            "cwd" => self.cwd().map(drop),
            "password_agent" => self.password_agent().map(drop),
            "timeout" => self.timeout().map(drop),
            "connect_timeout" => self.connect_timeout().map(drop),
            "env" => self.env().map(drop),
            "proxy_jump" => self.proxy_jump().map(drop),
            "ssh" => self.ssh_program().map(drop),
            "args" => self.ssh_args().map(drop),
            // Read by the inventory itself (role membership).
            "roles" => Ok(()),
            _ => return None,
        })
    }

    /// `env`: environment variables for commands; values may be strings, numbers or booleans.
    pub fn env(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        match self.config.get("env") {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(n) => Ok((k.clone(), n.to_string())),
                    Value::Bool(b) => Ok((k.clone(), b.to_string())),
                    other => {
                        Err(self.wrong(&format!("env.{k}"), "a string, number or boolean", other))
                    }
                })
                .collect(),
            Some(other) => Err(self.wrong(
                "env",
                "a table of variables (strings, numbers or booleans)",
                other,
            )),
        }
    }
}

/// The site and role keys Polyshell itself reads ([`Site::check_key`] checks each by its
/// accessor); every other key is free-form configuration.
pub const KNOWN_SITE_KEYS: &[&str] = &[
    "host",
    "user",
    "port",
    "identity",
    "sh",
    "cwd",
    "password_agent",
    "timeout",
    "connect_timeout",
    "env",
    "roles",
    "ssh",
    "args",
    "proxy_jump",
];

/// What [`duration_from_seconds`] takes, for error messages.
pub const SECONDS_RULE: &str = "a number of seconds, at least 0.001 and at most a year";

/// The one rule for every duration Polyshell takes (argv, Polyfile, site configuration):
/// finite, at least a millisecond (a smaller number would round to no time at all), at most
/// a year (longer is a typo, and would overflow the timers it feeds).
pub fn duration_from_seconds(seconds: f64) -> Result<Duration, &'static str> {
    if !(0.001..=365.0 * 86400.0).contains(&seconds) {
        return Err(SECONDS_RULE);
    }
    Ok(Duration::from_secs_f64(seconds))
}
