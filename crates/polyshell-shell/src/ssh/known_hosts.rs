//! known_hosts files as OpenSSH reads them (sshd(8), SSH_KNOWN_HOSTS FILE FORMAT): plain,
//! hashed and pattern entries, and the `@revoked` and `@cert-authority` markers.
//!
//! libssh2 compares keys, but knows neither host patterns (`*`, `?`, `!negation`) nor
//! markers, and matching a hashed name (`|1|salt|hash`) means feeding it the whole line. So
//! each file is indexed once per run (hashed names decoded once), and for one host polyshell
//! hands libssh2 only the lines that concern it, rewritten to name the host: plain lines
//! naming it, hashed lines whose HMAC-SHA1 of the host matches (one HMAC per hashed line,
//! as OpenSSH does), pattern lines whose patterns match. A fleet's known_hosts is thus not
//! re-parsed whole for every site.

use super::cache::FileCache;
use super::target::Target;
use ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use std::collections::HashMap;
use std::sync::Arc;

/// How a line names its hosts.
enum Hosts {
    /// Plain names (lowercased).
    Names(Vec<String>),
    /// Hashed (`|1|salt|hash`): the host is the one whose HMAC-SHA1 keyed with the salt is
    /// the hash.
    Hashed { salt: Vec<u8>, hash: [u8; 20] },
    /// Patterns or negations (a comma list): matched here.
    Patterns(String),
}

impl Hosts {
    fn new(patterns: HostPatterns) -> Hosts {
        match patterns {
            HostPatterns::HashedName { salt, hash } => Hosts::Hashed { salt, hash },
            HostPatterns::Patterns(names) if names.iter().any(|n| is_pattern(n)) => {
                Hosts::Patterns(names.join(","))
            }
            HostPatterns::Patterns(names) => {
                Hosts::Names(names.iter().map(|n| n.to_ascii_lowercase()).collect())
            }
        }
    }

    fn matches(&self, label: &str) -> bool {
        match self {
            Hosts::Names(names) => names.iter().any(|n| n.eq_ignore_ascii_case(label)),
            Hosts::Hashed { salt, hash } => {
                use hmac::{Hmac, Mac};
                let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(label.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => host_matches(patterns, label),
        }
    }
}

/// One entry: how it names hosts, and the rest of its line (key type, key, comment).
struct Line {
    hosts: Hosts,
    rest: Arc<str>,
}

impl Line {
    /// The line as libssh2 reads it, naming `label`, when it names `label`.
    fn for_host(&self, label: &str) -> Option<Arc<str>> {
        self.hosts
            .matches(label)
            .then(|| format!("{label} {}", self.rest).into())
    }
}

/// One known_hosts file, indexed.
#[derive(Default)]
struct KnownHosts {
    /// Every unmarked entry, in file order.
    lines: Vec<Line>,
    /// Entries with plain names, by each name (lowercased): indexes into `lines`.
    by_host: HashMap<String, Vec<usize>>,
    /// Hashed and pattern entries: indexes into `lines`.
    general: Vec<usize>,
    /// `@revoked` entries.
    revoked: Vec<Line>,
    /// `@cert-authority` entries.
    authorities: Vec<Line>,
}

fn is_pattern(hosts: &str) -> bool {
    hosts.contains(['*', '?', '!'])
}

impl KnownHosts {
    /// Each line parsed by `ssh-key` (fields separated by any whitespace, as OpenSSH reads
    /// them); a line it cannot parse is skipped, as OpenSSH skips it.
    fn parse(text: &str) -> KnownHosts {
        let mut index = KnownHosts::default();
        for (n, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first().is_none_or(|f| f.starts_with('#')) {
                continue;
            }
            let Ok(entry) = fields.join(" ").parse::<Entry>() else {
                tracing::debug!("known_hosts line {} skipped: not an entry", n + 1);
                continue;
            };
            let skip = usize::from(entry.marker().is_some()) + 1;
            let line = Line {
                hosts: Hosts::new(entry.host_patterns().clone()),
                rest: fields[skip..].join(" ").into(),
            };
            match entry.marker() {
                Some(Marker::Revoked) => index.revoked.push(line),
                Some(Marker::CertAuthority) => index.authorities.push(line),
                None => {
                    let i = index.lines.len();
                    match &line.hosts {
                        Hosts::Names(names) => {
                            for name in names {
                                index.by_host.entry(name.clone()).or_default().push(i);
                            }
                        }
                        _ => index.general.push(i),
                    }
                    index.lines.push(line);
                }
            }
        }
        index
    }

    /// The lines naming `label` (`host` or `[host]:port`), in file order, renamed to it.
    fn candidates(&self, label: &str) -> Vec<Arc<str>> {
        let mut found: Vec<usize> = self
            .by_host
            .get(&label.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .copied()
            .chain(
                self.general
                    .iter()
                    .copied()
                    .filter(|&i| self.lines[i].hosts.matches(label)),
            )
            .collect();
        found.sort_unstable();
        found.dedup();
        found
            .into_iter()
            .filter_map(|i| self.lines[i].for_host(label))
            .collect()
    }
}

/// OpenSSH's `match_hostname`: `patterns` is a comma list of `*`/`?` patterns; a matching
/// negated one (`!pattern`) excludes the host whatever else matches. Case-insensitive.
pub(crate) fn host_matches(patterns: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(pattern.to_ascii_lowercase().as_bytes(), host.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// `*` (any run) and `?` (any one byte) matching, iteratively with one backtrack point.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What the known_hosts files say that may concern one host, ready for libssh2.
#[derive(Default)]
pub(crate) struct Known {
    /// Entries naming the host (see the module docs).
    pub lines: Vec<Arc<str>>,
    /// `@revoked` entries naming it (marker taken off, renamed).
    pub revoked: Vec<Arc<str>>,
    /// `@cert-authority` entries naming it (marker taken off, renamed).
    pub authorities: Vec<Arc<str>>,
}

/// `host` on port 22, `[host]:port` otherwise, as known_hosts writes it; the `HostKeyAlias`
/// as it is when there is one (OpenSSH adds no port to it).
pub(crate) fn host_label(target: &Target) -> String {
    if let Some(alias) = &target.host_key_alias {
        alias.clone()
    } else if target.port == 22 {
        target.hostname.clone()
    } else {
        format!("[{}]:{}", target.hostname, target.port)
    }
}

/// The known_hosts entries that may concern this host. Files are read and indexed once per
/// run (cached by path and modification time), not once per site.
pub(crate) fn candidate_lines(target: &Target) -> Known {
    static CACHE: FileCache<KnownHosts> = FileCache::new();
    let label = host_label(target);
    let mut out = Known::default();
    for file in target.known_hosts.iter().chain(&target.global_known_hosts) {
        if let Ok(index) = CACHE.get(file, |file| {
            std::fs::read_to_string(file).map(|text| KnownHosts::parse(&text))
        }) {
            out.lines.extend(index.candidates(&label));
            out.revoked
                .extend(index.revoked.iter().filter_map(|l| l.for_host(&label)));
            out.authorities
                .extend(index.authorities.iter().filter_map(|l| l.for_host(&label)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_the_host_s_lines_hashed_lines_and_matching_patterns_in_file_order() {
        // `ssh-keygen -H` of web1 with salt "salt": HMAC-SHA1(key "salt", "web1").
        let hashed = {
            use base64::Engine;
            use hmac::{Hmac, Mac};
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"salt").unwrap();
            mac.update(b"web1");
            let b64 = base64::engine::general_purpose::STANDARD;
            format!(
                "|1|{}|{}",
                b64.encode(b"salt"),
                b64.encode(mac.finalize().into_bytes())
            )
        };
        const ED: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINKBEHd79jrTPg0ouZyOnd95Dx4sXahrwpVSMaE96Agx";
        const EC: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBL35uItF1hqG2zKg4zAPg0daUTz3b47ykt1DXJ5HhgdHgxzpI3Oljr9oHZNDMRLmusEhyh3d5zZ1S973KRCb9SE=";
        // The comment field (the fourth) tells the entries apart.
        let text = format!(
            "# comment\n\
             web1,10.0.0.1 {ED} k1\n\
             {hashed} {ED} k2\n\
             [web1]:2222\t{ED}   k3\n\
             @revoked web1 {ED} k4\n\
             *.example.org,!bad.example.org {EC} k5\n\
             web2 {ED} k6\n\
             \n\
             not a known_hosts line\n\
             10.0.0.1,WEB1 {EC} k7\n\
             [web?]:22* {ED} k8\n\
             |1|bad|line {ED} k0\n\
             @cert-authority *.example.org {ED} k9\n"
        );
        let index = KnownHosts::parse(&text);
        let lines = |host: &str| -> Vec<String> {
            index
                .candidates(host)
                .iter()
                .map(|l| l.to_string())
                .collect()
        };
        let keys = |host: &str| -> Vec<String> {
            lines(host)
                .iter()
                .map(|l| l.split_whitespace().nth(3).unwrap().to_owned())
                .collect()
        };
        assert_eq!(keys("web1"), ["k1", "k2", "k7"]);
        assert_eq!(keys("[web1]:2222"), ["k3", "k8"]);
        assert_eq!(keys("web2"), ["k6"]);
        assert_eq!(keys("a.example.org"), ["k5"]);
        assert!(keys("bad.example.org").is_empty());
        // Pattern and hashed lines reach libssh2 naming the host itself.
        assert_eq!(lines("A.example.org")[0], format!("A.example.org {EC} k5"));
        assert_eq!(lines("web1")[1], format!("web1 {ED} k2"));
        assert_eq!(lines("[web1]:2222")[0], format!("[web1]:2222 {ED} k3"));
        let revoked = |host: &str| index.revoked[0].for_host(host).map(|l| l.to_string());
        assert_eq!(revoked("web1").unwrap(), format!("web1 {ED} k4"));
        assert_eq!(revoked("web2"), None);
        let ca = |host: &str| index.authorities[0].for_host(host).map(|l| l.to_string());
        assert_eq!(
            ca("x.example.org").unwrap(),
            format!("x.example.org {ED} k9")
        );
        assert_eq!(ca("example.org"), None);
    }

    #[test]
    fn host_patterns_match_as_openssh_does() {
        for (patterns, host, expected) in [
            ("*", "anything", true),
            ("web?", "web1", true),
            ("web?", "web10", false),
            ("*.example.org", "a.b.example.org", true),
            ("*.example.org", "example.org", false),
            ("10.0.*,!10.0.0.9", "10.0.0.9", false),
            ("10.0.*,!10.0.0.9", "10.0.0.8", true),
            ("!10.0.0.9", "10.0.0.8", false),
            ("[127.77.*]:2222", "[127.77.0.7]:2222", true),
            ("[127.77.*]:2222", "[127.77.0.7]:22", false),
            ("WEB*", "web1", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(host_matches(patterns, host), expected, "{patterns} {host}");
        }
    }
}
