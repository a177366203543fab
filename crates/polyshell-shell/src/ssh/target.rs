//! Where and how to connect: a site's own SSH options merged over `~/.ssh/config`.

use super::cache::FileCache;
use crate::error::ErrorKind;
use ssh2_config::{DefaultAlgorithms, HostParams, ParseRule, SshConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Host key checking, as OpenSSH's `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// An unknown or changed key fails the site (the default).
    #[default]
    Strict,
    /// An unknown key is recorded in known_hosts (trust on first use); a changed key fails.
    AcceptNew,
    /// No checking at all; a loud warning for each connection.
    Off,
}

impl HostKeyPolicy {
    /// `yes`/`strict`, `accept-new`, `no`/`off` (as in ssh_config and the CLI).
    pub fn parse(s: &str) -> Option<HostKeyPolicy> {
        match s.to_ascii_lowercase().as_str() {
            "yes" | "strict" | "ask" => Some(HostKeyPolicy::Strict),
            "accept-new" => Some(HostKeyPolicy::AcceptNew),
            "no" | "off" => Some(HostKeyPolicy::Off),
            _ => None,
        }
    }
}

/// SSH options of one site. Unset fields come from ssh_config, then OpenSSH's defaults;
/// set fields win over ssh_config.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// Host name or ssh_config alias.
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// A private key file tried before the ssh_config and default ones.
    pub identity: Option<PathBuf>,
    /// The ssh_config file; `None` reads `~/.ssh/config` when it exists.
    pub ssh_config: Option<PathBuf>,
    /// known_hosts file(s) to check and record in, overriding `UserKnownHostsFile`.
    pub known_hosts: Option<PathBuf>,
    pub host_key_policy: Option<HostKeyPolicy>,
    /// TCP connect, SSH handshake and authentication together (default 10 s).
    pub connect_timeout: Option<Duration>,
    /// Keepalive interval; the connection is declared lost after 3 unanswered (default 15 s).
    pub keepalive: Option<Duration>,
    /// Bastions to jump through, overriding `ProxyJump` (`host`, `user@host:port`, comma list).
    pub proxy_jump: Option<String>,
}

impl SshOptions {
    pub fn new(host: impl Into<String>) -> SshOptions {
        SshOptions {
            host: host.into(),
            ..SshOptions::default()
        }
    }
}

/// Everything resolved for one connection.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The name the user gave (alias), for messages.
    pub alias: String,
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub identities: Vec<PathBuf>,
    pub identities_only: bool,
    pub known_hosts: Vec<PathBuf>,
    pub policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub jumps: Vec<String>,
}

impl Target {
    /// `host:port` as it appears in messages.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.hostname, self.port)
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn expand_tilde(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => PathBuf::from(p),
    }
}

fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into())
}

/// A parsed ssh_config with its `Host` blocks indexed: a fleet's config often has a block
/// per site, and `SshConfig::query` would try (compiling each pattern anew) every block for
/// every site.
struct IndexedConfig {
    config: SshConfig,
    /// Blocks whose patterns are all plain names, by name.
    by_name: HashMap<String, Vec<usize>>,
    /// Blocks with a wildcard or a negation: tried for every host.
    general: Vec<usize>,
}

impl IndexedConfig {
    fn new(config: SshConfig) -> IndexedConfig {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut general = Vec::new();
        for (i, host) in config.get_hosts().iter().enumerate() {
            let plain = host
                .pattern
                .iter()
                .all(|c| !c.negated && !c.pattern.contains(['*', '?']));
            if plain {
                for clause in &host.pattern {
                    by_name.entry(clause.pattern.clone()).or_default().push(i);
                }
            } else {
                general.push(i);
            }
        }
        IndexedConfig {
            config,
            by_name,
            general,
        }
    }

    /// What `SshConfig::query` gives (blocks merged in file order, the first value of each
    /// field winning), but for the algorithm lists, which polyshell does not read.
    fn query(&self, host: &str) -> HostParams {
        let hosts = self.config.get_hosts();
        let mut matching: Vec<usize> = self
            .general
            .iter()
            .copied()
            .filter(|&i| hosts[i].intersects(host))
            .chain(self.by_name.get(host).into_iter().flatten().copied())
            .collect();
        matching.sort_unstable();
        matching.dedup();
        let mut params = HostParams::new(&DefaultAlgorithms::empty());
        for i in matching {
            params.overwrite_if_none(&hosts[i].params);
        }
        params
    }
}

/// Parsed ssh_config files: a run resolves every site through the same file, which is parsed
/// once, not once per site.
fn read_config(path: &Path) -> Result<Arc<IndexedConfig>, ErrorKind> {
    static CACHE: FileCache<IndexedConfig> = FileCache::new();
    CACHE.get(path, |path| {
        let file = std::fs::File::open(path)
            .map_err(|e| ErrorKind::Config(format!("{}: {e}", path.display())))?;
        SshConfig::default()
            .parse(
                &mut std::io::BufReader::new(file),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map(IndexedConfig::new)
            .map_err(|e| ErrorKind::Config(format!("{}: {e}", path.display())))
    })
}

/// A `user@host:port` jump spec, or a plain alias.
fn split_jump(spec: &str) -> (Option<String>, String, Option<u16>) {
    let (user, rest) = match spec.split_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, spec),
    };
    match rest.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (user, h.to_owned(), p.parse().ok()),
        _ => (user, rest.to_owned(), None),
    }
}

pub(crate) fn resolve(opts: &SshOptions) -> Result<Target, ErrorKind> {
    let config_path = match &opts.ssh_config {
        Some(p) => Some(p.clone()),
        None => Some(home().join(".ssh").join("config")).filter(|p| p.exists()),
    };
    let config = config_path.as_deref().map(read_config).transpose()?;
    let params = config.as_ref().map(|c| c.query(&opts.host));
    let field = |name: &str| -> Option<String> {
        let p = params.as_ref()?;
        p.unsupported_fields
            .iter()
            .chain(p.ignored_fields.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first().cloned())
    };

    let hostname = params
        .as_ref()
        .and_then(|p| p.host_name.clone())
        .unwrap_or_else(|| opts.host.clone());
    let port = opts
        .port
        .or_else(|| params.as_ref().and_then(|p| p.port))
        .unwrap_or(22);
    let user = opts
        .user
        .clone()
        .or_else(|| params.as_ref().and_then(|p| p.user.clone()))
        .unwrap_or_else(local_user);

    let mut identities: Vec<PathBuf> = opts.identity.iter().cloned().collect();
    let configured: Vec<PathBuf> = params
        .as_ref()
        .and_then(|p| p.identity_file.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| expand_tilde(&p.to_string_lossy()))
        .collect();
    identities.extend(configured);
    let identities_only = field("IdentitiesOnly").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    if identities.is_empty() {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            identities.push(home().join(".ssh").join(name));
        }
    }

    let known_hosts = match &opts.known_hosts {
        Some(p) => vec![p.clone()],
        None => match field("UserKnownHostsFile") {
            Some(files) => files.split_whitespace().map(expand_tilde).collect(),
            None => vec![home().join(".ssh").join("known_hosts")],
        },
    };
    let policy = match opts.host_key_policy {
        Some(p) => p,
        None => match field("StrictHostKeyChecking") {
            Some(v) => HostKeyPolicy::parse(&v).ok_or_else(|| {
                ErrorKind::Config(format!(
                    "StrictHostKeyChecking {v}: expected yes, accept-new or no"
                ))
            })?,
            None => HostKeyPolicy::Strict,
        },
    };
    let connect_timeout = opts
        .connect_timeout
        .or_else(|| params.as_ref().and_then(|p| p.connect_timeout))
        .unwrap_or(Duration::from_secs(10));
    let keepalive = opts
        .keepalive
        .or_else(|| params.as_ref().and_then(|p| p.server_alive_interval))
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(15));
    let jumps = match &opts.proxy_jump {
        Some(j) => j
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        None => params
            .as_ref()
            .and_then(|p| p.proxy_jump.clone())
            .unwrap_or_default(),
    };
    let jumps = jumps
        .into_iter()
        .filter(|j| !j.eq_ignore_ascii_case("none"))
        .collect();
    Ok(Target {
        alias: opts.host.clone(),
        hostname,
        port,
        user,
        identities,
        identities_only,
        known_hosts,
        policy,
        connect_timeout,
        keepalive,
        jumps,
    })
}

/// The options of a jump host: resolved through the same ssh_config, sharing the policy.
pub(crate) fn jump_options(spec: &str, outer: &SshOptions) -> SshOptions {
    let (user, host, port) = split_jump(spec);
    SshOptions {
        host,
        user,
        port,
        identity: outer.identity.clone(),
        ssh_config: outer.ssh_config.clone(),
        known_hosts: outer.known_hosts.clone(),
        host_key_policy: outer.host_key_policy,
        connect_timeout: outer.connect_timeout,
        keepalive: outer.keepalive,
        proxy_jump: Some("none".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_options_win_over_ssh_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host web1\n  HostName 10.0.0.1\n  Port 2200\n  User deploy\n  ProxyJump bastion\n  \
             StrictHostKeyChecking accept-new\n  UserKnownHostsFile /tmp/kh\n  IdentitiesOnly yes\n  \
             IdentityFile ~/.ssh/web\n  ConnectTimeout 3\n  ServerAliveInterval 5\n",
        )
        .unwrap();
        let mut opts = SshOptions::new("web1");
        opts.ssh_config = Some(cfg);
        let t = resolve(&opts).unwrap();
        assert_eq!(
            (t.hostname.as_str(), t.port, t.user.as_str()),
            ("10.0.0.1", 2200, "deploy")
        );
        assert_eq!(t.jumps, ["bastion"]);
        assert_eq!(t.policy, HostKeyPolicy::AcceptNew);
        assert_eq!(t.known_hosts, [PathBuf::from("/tmp/kh")]);
        assert!(t.identities_only);
        assert!(t.identities[0].ends_with(".ssh/web"));
        assert_eq!(
            (t.connect_timeout, t.keepalive),
            (Duration::from_secs(3), Duration::from_secs(5))
        );

        opts.port = Some(22);
        opts.user = Some("me".into());
        opts.host_key_policy = Some(HostKeyPolicy::Strict);
        let t = resolve(&opts).unwrap();
        assert_eq!(
            (t.port, t.user.as_str(), t.policy),
            (22, "me", HostKeyPolicy::Strict)
        );
        assert_eq!(split_jump("u@h:2"), (Some("u".into()), "h".into(), Some(2)));
    }

    /// The index gives what ssh2-config's own query gives, block order and negation included.
    #[test]
    fn indexed_query_agrees_with_ssh2_config() {
        let text = "Host web1 web2\n  User first\n  IdentityFile ~/.ssh/a\n\
                    Host web*\n  User second\n  Port 2201\n  HostName wildcard\n\
                    Host !web2 web?\n  Port 2202\n  IdentitiesOnly yes\n\
                    Host db1\n  HostName 10.0.0.9\n\
                    Host web2\n  HostName late\n  ConnectTimeout 4\n\
                    Host *\n  User everyone\n  StrictHostKeyChecking accept-new\n";
        let parse = || {
            SshConfig::default()
                .parse(
                    &mut text.as_bytes(),
                    ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
                )
                .unwrap()
        };
        let (plain, indexed) = (parse(), IndexedConfig::new(parse()));
        for host in ["web1", "web2", "web3", "webby", "db1", "db2", "WEB1", ""] {
            let (a, b) = (plain.query(host), indexed.query(host));
            assert_eq!(
                (
                    &a.host_name,
                    a.port,
                    &a.user,
                    &a.identity_file,
                    a.connect_timeout
                ),
                (
                    &b.host_name,
                    b.port,
                    &b.user,
                    &b.identity_file,
                    b.connect_timeout
                ),
                "{host}"
            );
            assert_eq!(a.unsupported_fields, b.unsupported_fields, "{host}");
            assert_eq!(a.ignored_fields, b.ignored_fields, "{host}");
        }
    }
}
