//! Where and how to connect: a site's own SSH options merged over `~/.ssh/config`.

use super::auth::KeyPassphrases;
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
    /// The user to log in as (over ssh_config's `User`).
    pub user: Option<String>,
    /// The port (over ssh_config's `Port`).
    pub port: Option<u16>,
    /// A private key file tried before the ssh_config and default ones.
    pub identity: Option<PathBuf>,
    /// The ssh_config file; `None` reads `~/.ssh/config` when it exists.
    pub ssh_config: Option<PathBuf>,
    /// known_hosts file(s) to check and record in, overriding `UserKnownHostsFile`.
    pub known_hosts: Option<PathBuf>,
    /// Host key checking (over ssh_config's `StrictHostKeyChecking`).
    pub host_key_policy: Option<HostKeyPolicy>,
    /// TCP connect, SSH handshake and authentication together (default 10 s).
    pub connect_timeout: Option<Duration>,
    /// Keepalive interval; the connection is declared lost after 3 unanswered (default 15 s).
    pub keepalive: Option<Duration>,
    /// Bastions to jump through, overriding `ProxyJump` (`host`, `user@host:port`, comma list).
    pub proxy_jump: Option<String>,
    /// Where the passphrases of encrypted key files come from, shared by the sites of a run
    /// so that each is asked once; `None`: one process-wide cache asking as OpenSSH would
    /// ([`KeyPassphrases::from_environment`]).
    pub passphrases: Option<Arc<KeyPassphrases>>,
    /// Runs the connection's plain commands (no input, no terminal, nothing left in the
    /// background) one after another in one `sh` kept on the connection, each in a subshell,
    /// instead of a session each: the site forks one sshd and starts the login shell once,
    /// not per command. For a connection that runs many commands. What a command sees then
    /// differs in two points: `$$` is that shell's pid (the process group a cancellation
    /// ends, as on a session), and a command killed by a signal reports `128 + N` as its
    /// exit code. Off by default; the CLI turns it on for a site with more than one action.
    pub resident_shell: bool,
}

impl SshOptions {
    /// Options for `host`, everything else from ssh_config.
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
    /// Identity files in the order they are tried; true for one the user configured (a
    /// missing default is not worth a word).
    pub identities: Vec<(PathBuf, bool)>,
    /// `CertificateFile`s (a key's `KEY-cert.pub` is found without one).
    pub certificates: Vec<PathBuf>,
    pub identities_only: bool,
    pub agent: AgentChoice,
    pub passphrases: Arc<KeyPassphrases>,
    /// The user's known_hosts files (new keys are recorded in the first).
    pub known_hosts: Vec<PathBuf>,
    /// The system's (`GlobalKnownHostsFile`): read, never written.
    pub global_known_hosts: Vec<PathBuf>,
    /// `HostKeyAlias`: the name the host key is looked up and recorded under.
    pub host_key_alias: Option<String>,
    pub policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    /// Keepalive interval; `None` when `ServerAliveInterval 0` turned keepalives off.
    pub keepalive: Option<Duration>,
    pub jumps: Vec<String>,
}

/// Which ssh-agent to ask (`IdentityAgent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AgentChoice {
    /// `SSH_AUTH_SOCK`, when set (the default).
    Env,
    /// `IdentityAgent none`.
    None,
    /// A socket path.
    Path(PathBuf),
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

fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into())
}

fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// What ssh_config's `%` tokens stand for, for one connection (see TOKENS in ssh_config(5)).
struct Tokens<'a> {
    /// %h: the remote host name (after `HostName`).
    hostname: &'a str,
    /// %n: the name as given.
    original: &'a str,
    /// %p
    port: u16,
    /// %r
    user: &'a str,
    /// %j: the ProxyJump, or "".
    jump: &'a str,
}

/// `text` with its `%` tokens and `${VAR}` environment references replaced, and a leading
/// `~` as the home directory, as OpenSSH does for file names; `key` names the option in errors.
fn expand(text: &str, t: &Tokens, key: &str) -> Result<String, ErrorKind> {
    let bad = |why: String| ErrorKind::ConfigValue {
        option: key.to_owned(),
        value: text.to_owned(),
        reason: why,
    };
    let mut out = String::new();
    let rest = match text.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            out.push_str(&home().to_string_lossy());
            rest
        }
        _ => text,
    };
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('%') => out.push('%'),
                Some('h') => out.push_str(t.hostname),
                Some('n') | Some('k') => out.push_str(t.original),
                Some('p') => out.push_str(&t.port.to_string()),
                Some('r') => out.push_str(t.user),
                Some('u') => out.push_str(&local_user()),
                Some('d') => out.push_str(&home().to_string_lossy()),
                Some('i') => out.push_str(&unsafe { libc::getuid() }.to_string()),
                Some('l') => out.push_str(&local_hostname()),
                Some('L') => out.push_str(local_hostname().split('.').next().unwrap_or("")),
                Some('j') => out.push_str(t.jump),
                Some('C') => {
                    // OpenSSH 9.2's: SHA-1 of %l%h%p%r, in hex.
                    use sha1::Digest;
                    let text = format!("{}{}{}{}", local_hostname(), t.hostname, t.port, t.user);
                    let hash = sha1::Sha1::digest(text.as_bytes());
                    out.extend(hash.iter().map(|b| format!("{b:02x}")));
                }
                Some(other) => return Err(bad(format!("the token %{other} is not supported"))),
                None => return Err(bad("a lone % at the end".into())),
            },
            '$' if chars.clone().next() == Some('{') => {
                chars.next();
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let value = std::env::var(&name)
                    .map_err(|_| bad(format!("the environment variable {name} is not set")))?;
                out.push_str(&value);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// OpenSSH's `GlobalKnownHostsFile` default.
const DEFAULT_GLOBAL_KNOWN_HOSTS: &[&str] =
    &["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// The identity files OpenSSH tries when none is configured, in its order.
const DEFAULT_IDENTITIES: &[&str] = &[
    "id_rsa",
    "id_ecdsa",
    "id_ecdsa_sk",
    "id_ed25519",
    "id_ed25519_sk",
    "id_xmss",
    "id_dsa",
];

/// The process-wide passphrase cache of sites that bring none.
fn default_passphrases() -> Arc<KeyPassphrases> {
    static DEFAULT: std::sync::OnceLock<Arc<KeyPassphrases>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(KeyPassphrases::from_environment)
        .clone()
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
        // IdentityFile adds up across blocks in OpenSSH ("all these identities will be
        // tried in sequence"); ssh2-config keeps the first block's.
        let mut identity_files = Vec::new();
        for i in matching {
            params.overwrite_if_none(&hosts[i].params);
            identity_files.extend(hosts[i].params.identity_file.iter().flatten().cloned());
        }
        params.identity_file = (!identity_files.is_empty()).then_some(identity_files);
        params
    }
}

/// Parsed ssh_config files: a run resolves every site through the same file, which is parsed
/// once, not once per site.
fn read_config(path: &Path) -> Result<Arc<IndexedConfig>, ErrorKind> {
    static CACHE: FileCache<IndexedConfig> = FileCache::new();
    CACHE.get(path, |path| {
        let file = std::fs::File::open(path).map_err(|e| ErrorKind::ConfigFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        SshConfig::default()
            .parse(
                &mut std::io::BufReader::new(file),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map(IndexedConfig::new)
            .map_err(|e| ErrorKind::ConfigFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })
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
    // Every value of an option ssh2-config leaves to us (a list option's words).
    let field = |name: &str| -> Vec<String> {
        let Some(p) = params.as_ref() else {
            return Vec::new();
        };
        p.unsupported_fields
            .iter()
            .chain(p.ignored_fields.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let first = |name: &str| field(name).into_iter().next();

    let port = opts
        .port
        .or_else(|| params.as_ref().and_then(|p| p.port))
        .unwrap_or(22);
    let user = opts
        .user
        .clone()
        .or_else(|| params.as_ref().and_then(|p| p.user.clone()))
        .unwrap_or_else(local_user);
    let jumps: Vec<String> = match &opts.proxy_jump {
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
    let jumps: Vec<String> = jumps
        .into_iter()
        .filter(|j| !j.eq_ignore_ascii_case("none"))
        .collect();
    let jump = jumps.join(",");
    // HostName may use %h (the name given) and %%.
    let host_tokens = Tokens {
        hostname: &opts.host,
        original: &opts.host,
        port,
        user: &user,
        jump: &jump,
    };
    let hostname = match params.as_ref().and_then(|p| p.host_name.clone()) {
        Some(name) => expand(&name, &host_tokens, "HostName")?,
        None => opts.host.clone(),
    };
    let tokens = Tokens {
        hostname: &hostname,
        ..host_tokens
    };
    let path = |text: &str, key: &str| expand(text, &tokens, key).map(PathBuf::from);

    // The site's key first (as `ssh -i`), then ssh_config's; OpenSSH's defaults when neither.
    let mut identities: Vec<(PathBuf, bool)> = Vec::new();
    if let Some(identity) = &opts.identity {
        identities.push((path(&identity.to_string_lossy(), "identity")?, true));
    }
    for configured in params
        .as_ref()
        .and_then(|p| p.identity_file.clone())
        .unwrap_or_default()
    {
        identities.push((path(&configured.to_string_lossy(), "IdentityFile")?, true));
    }
    if identities.is_empty() {
        for name in DEFAULT_IDENTITIES {
            identities.push((home().join(".ssh").join(name), false));
        }
    }
    let certificates = params
        .as_ref()
        .and_then(|p| p.certificate_file.clone())
        .map(|c| path(&c.to_string_lossy(), "CertificateFile"))
        .into_iter()
        .collect::<Result<_, _>>()?;
    let identities_only = first("IdentitiesOnly").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    let agent = match first("IdentityAgent") {
        None => AgentChoice::Env,
        Some(v) if v.eq_ignore_ascii_case("none") => AgentChoice::None,
        Some(v) if v == "SSH_AUTH_SOCK" => AgentChoice::Env,
        Some(v) => match v.strip_prefix('$') {
            Some(var) => std::env::var_os(var)
                .map(|p| AgentChoice::Path(PathBuf::from(p)))
                .unwrap_or(AgentChoice::None),
            None => AgentChoice::Path(path(&v, "IdentityAgent")?),
        },
    };

    let known_hosts = match &opts.known_hosts {
        Some(p) => vec![p.clone()],
        None => match field("UserKnownHostsFile") {
            files if files.is_empty() => vec![home().join(".ssh").join("known_hosts")],
            files => files
                .iter()
                .flat_map(|f| f.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .filter(|f| !f.eq_ignore_ascii_case("none"))
                .map(|f| path(&f, "UserKnownHostsFile"))
                .collect::<Result<_, _>>()?,
        },
    };
    let global_known_hosts = match field("GlobalKnownHostsFile") {
        files if files.is_empty() => DEFAULT_GLOBAL_KNOWN_HOSTS
            .iter()
            .map(PathBuf::from)
            .collect(),
        files => files
            .iter()
            .flat_map(|f| f.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|f| !f.eq_ignore_ascii_case("none"))
            .map(|f| path(&f, "GlobalKnownHostsFile"))
            .collect::<Result<_, _>>()?,
    };
    let host_key_alias = first("HostKeyAlias");
    let policy = match opts.host_key_policy {
        Some(p) => p,
        None => match first("StrictHostKeyChecking") {
            Some(v) => HostKeyPolicy::parse(&v).ok_or_else(|| ErrorKind::ConfigValue {
                option: "StrictHostKeyChecking".into(),
                value: v.clone(),
                reason: "expected yes, accept-new or no".into(),
            })?,
            None => HostKeyPolicy::Strict,
        },
    };
    let connect_timeout = opts
        .connect_timeout
        .or_else(|| params.as_ref().and_then(|p| p.connect_timeout))
        .unwrap_or(Duration::from_secs(10));
    // Polyshell's default is 15 s (a dead host must not hang a run); `ServerAliveInterval 0`
    // (in ssh_config or the options) turns keepalives off, as in OpenSSH.
    let keepalive = match opts
        .keepalive
        .or_else(|| params.as_ref().and_then(|p| p.server_alive_interval))
    {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(15)),
    };
    Ok(Target {
        alias: opts.host.clone(),
        hostname,
        port,
        user,
        identities,
        certificates,
        identities_only,
        agent,
        passphrases: opts.passphrases.clone().unwrap_or_else(default_passphrases),
        known_hosts,
        global_known_hosts,
        host_key_alias,
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
        passphrases: outer.passphrases.clone(),
        resident_shell: false,
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
        assert!(t.identities[0].0.ends_with(".ssh/web"));
        assert_eq!(
            (t.connect_timeout, t.keepalive),
            (Duration::from_secs(3), Some(Duration::from_secs(5)))
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

    fn resolve_with(config: &str, host: &str) -> Result<Target, ErrorKind> {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, config).unwrap();
        let mut opts = SshOptions::new(host);
        opts.ssh_config = Some(cfg);
        resolve(&opts)
    }

    /// ssh_config(5)'s TOKENS in the file options and HostName, `${VAR}`, `~`, as OpenSSH.
    #[test]
    fn tokens_resolve_as_openssh_does() {
        std::env::set_var("POLYSHELL_TOKEN_TEST", "from-env");
        let t = resolve_with(
            "Host web*\n  HostName %h.example.org\n  User deploy\n  Port 2200\n  \
             ProxyJump gw\n  IdentityFile ~/.ssh/%r@%h:%p\n  IdentityFile %d/keys/%n-%u-%i-%%\n  \
             CertificateFile ${POLYSHELL_TOKEN_TEST}/%h-cert.pub\n  \
             UserKnownHostsFile /kh/%h_%p /kh/%j/%k\n  IdentityAgent ~/agent-%L\n",
            "web1",
        )
        .unwrap();
        let home = home().display().to_string();
        let uid = unsafe { libc::getuid() };
        assert_eq!(t.hostname, "web1.example.org");
        assert_eq!(
            t.identities,
            [
                (
                    PathBuf::from(format!("{home}/.ssh/deploy@web1.example.org:2200")),
                    true
                ),
                (
                    PathBuf::from(format!("{home}/keys/web1-{}-{uid}-%", local_user())),
                    true
                ),
            ]
        );
        assert_eq!(
            t.certificates,
            [PathBuf::from("from-env/web1.example.org-cert.pub")]
        );
        assert_eq!(
            t.known_hosts,
            [
                PathBuf::from("/kh/web1.example.org_2200"),
                PathBuf::from("/kh/gw/web1")
            ]
        );
        let short = local_hostname().split('.').next().unwrap().to_owned();
        assert_eq!(
            t.agent,
            AgentChoice::Path(PathBuf::from(format!("{home}/agent-{short}")))
        );
        // A token OpenSSH has and polyshell does not is an error naming it, not a file name.
        let err = resolve_with("Host *\n  IdentityFile ~/.ssh/%T\n", "web1").unwrap_err();
        assert!(err.to_string().contains("%T is not supported"), "{err}");
        // %C is what `ssh -G` prints for ControlPath %C.
        let c = resolve_with("Host *\n  IdentityFile /k/%C\n  User u\n  Port 2\n", "h").unwrap();
        let expected = {
            use sha1::Digest;
            let hash = sha1::Sha1::digest(format!("{}h2u", local_hostname()).as_bytes());
            hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(c.identities[0].0, PathBuf::from(format!("/k/{expected}")));
        let err =
            resolve_with("Host *\n  IdentityFile ${POLYSHELL_NO_SUCH_VAR}/k\n", "w").unwrap_err();
        assert!(
            err.to_string().contains("POLYSHELL_NO_SUCH_VAR is not set"),
            "{err}"
        );
    }

    #[test]
    fn keepalives_identities_and_agent_follow_openssh_defaults() {
        // ServerAliveInterval 0 turns keepalives off; unset keeps polyshell's 15 s.
        let off = resolve_with("Host *\n  ServerAliveInterval 0\n", "a").unwrap();
        assert_eq!(off.keepalive, None);
        let unset = resolve_with("Host *\n  User x\n", "a").unwrap();
        assert_eq!(unset.keepalive, Some(Duration::from_secs(15)));
        // No IdentityFile: OpenSSH's default files, in its order, none of them "configured".
        let names: Vec<String> = unset
            .identities
            .iter()
            .map(|(p, configured)| {
                assert!(!configured);
                p.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(names, DEFAULT_IDENTITIES);
        assert_eq!(unset.agent, AgentChoice::Env);
        // One IdentityFile: the defaults are not tried.
        let one = resolve_with("Host *\n  IdentityFile /k/mine\n", "a").unwrap();
        assert_eq!(one.identities, [(PathBuf::from("/k/mine"), true)]);
        // Every matching block's IdentityFile adds to the list, in file order.
        let two = resolve_with(
            "Host a\n  IdentityFile /k/a\nHost *\n  IdentityFile /k/all\n",
            "a",
        )
        .unwrap();
        assert_eq!(
            two.identities,
            [
                (PathBuf::from("/k/a"), true),
                (PathBuf::from("/k/all"), true)
            ]
        );
        let none = resolve_with("Host *\n  IdentityAgent none\n", "a").unwrap();
        assert_eq!(none.agent, AgentChoice::None);
        // Global known_hosts: OpenSSH's two files unless GlobalKnownHostsFile says otherwise.
        assert_eq!(
            unset.global_known_hosts,
            [
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
                PathBuf::from("/etc/ssh/ssh_known_hosts2")
            ]
        );
        let global = resolve_with(
            "Host *\n  GlobalKnownHostsFile /g/%h none\n  HostKeyAlias web-vip\n",
            "a",
        )
        .unwrap();
        assert_eq!(global.global_known_hosts, [PathBuf::from("/g/a")]);
        assert_eq!(global.host_key_alias.as_deref(), Some("web-vip"));
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
