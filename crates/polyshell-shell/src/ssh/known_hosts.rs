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
use std::collections::HashMap;
use std::sync::Arc;

/// How a line names its hosts.
enum Hosts {
    /// Hashed (`|1|salt|hash`), decoded: the host is the one whose HMAC-SHA1 keyed with the
    /// salt is the hash.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    /// Patterns or negations: matched here.
    Patterns(Arc<str>),
}

impl Hosts {
    /// `hosts` (a line's first field) when it is hashed or has patterns; `None` for a plain
    /// list of names, or a hashed field that does not decode (OpenSSH ignores such lines).
    fn parse(hosts: &str) -> Option<Hosts> {
        use base64::Engine;
        if let Some(hashed) = hosts.strip_prefix("|1|") {
            let (salt, hash) = hashed.split_once('|')?;
            let decode = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
            return Some(Hosts::Hashed {
                salt: decode(salt)?,
                hash: decode(hash)?,
            });
        }
        is_pattern(hosts).then(|| Hosts::Patterns(hosts.into()))
    }

    fn matches(&self, label: &str) -> bool {
        match self {
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

/// One known_hosts file, indexed.
#[derive(Default)]
struct KnownHosts {
    /// Plain entries, by each host name they list: (line number, line).
    by_host: HashMap<String, Vec<(usize, Arc<str>)>>,
    /// Hashed and pattern entries: (line number, how it names hosts, line).
    general: Vec<(usize, Hosts, Arc<str>)>,
    /// `@revoked` lines, the marker taken off.
    revoked: Vec<Arc<str>>,
    /// `@cert-authority` lines, the marker taken off.
    authorities: Vec<Arc<str>>,
}

fn is_pattern(hosts: &str) -> bool {
    hosts.contains(['*', '?', '!'])
}

impl KnownHosts {
    fn parse(text: &str) -> KnownHosts {
        let mut index = KnownHosts::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            let Some(hosts) = line.split_whitespace().next() else {
                continue;
            };
            if hosts.starts_with('#') {
                continue;
            }
            if let Some(marker) = hosts.strip_prefix('@') {
                let rest: Arc<str> = line[hosts.len()..].trim_start().into();
                match marker {
                    "revoked" => index.revoked.push(rest),
                    "cert-authority" => index.authorities.push(rest),
                    _ => {}
                }
                continue;
            }
            let line: Arc<str> = line.into();
            if let Some(parsed) = Hosts::parse(hosts) {
                index.general.push((n, parsed, line));
            } else if hosts.starts_with("|1|") {
                continue; // a hashed name that does not decode names nobody
            } else {
                for host in hosts.split(',') {
                    index
                        .by_host
                        .entry(host.to_ascii_lowercase())
                        .or_default()
                        .push((n, line.clone()));
                }
            }
        }
        index
    }

    /// The lines that may concern `label` (`host` or `[host]:port`), in file order, pattern
    /// lines rewritten to name `label`.
    fn candidates(&self, label: &str) -> Vec<Arc<str>> {
        let mut lines: Vec<(usize, Arc<str>)> = self
            .by_host
            .get(&label.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for (n, hosts, line) in &self.general {
            if hosts.matches(label) {
                lines.push((*n, rename(line, label)));
            }
        }
        lines.sort_unstable_by_key(|(n, _)| *n);
        lines.dedup_by_key(|(n, _)| *n);
        lines.into_iter().map(|(_, line)| line).collect()
    }
}

/// `line` with its hosts field replaced by `label`.
fn rename(line: &str, label: &str) -> Arc<str> {
    let hosts = line.split_whitespace().next().unwrap_or("");
    let rest = line[hosts.len()..].trim_start();
    format!("{label} {rest}").into()
}

/// `line` (hosts field first) renamed to `label` when its hosts field names `label`.
fn for_host(line: &str, label: &str) -> Option<Arc<str>> {
    let hosts = line.split_whitespace().next()?;
    let names = match Hosts::parse(hosts) {
        Some(parsed) => parsed.matches(label),
        None if hosts.starts_with("|1|") => false,
        None => host_matches(hosts, label),
    };
    names.then(|| rename(line, label))
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

/// `host` on port 22, `[host]:port` otherwise, as known_hosts writes it.
pub(crate) fn host_label(target: &Target) -> String {
    if target.port == 22 {
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
    for file in &target.known_hosts {
        if let Ok(index) = CACHE.get(file, |file| {
            std::fs::read_to_string(file).map(|text| KnownHosts::parse(&text))
        }) {
            out.lines.extend(index.candidates(&label));
            out.revoked.extend(
                index
                    .revoked
                    .iter()
                    .filter_map(|line| for_host(line, &label)),
            );
            out.authorities.extend(
                index
                    .authorities
                    .iter()
                    .filter_map(|line| for_host(line, &label)),
            );
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
        let text = format!(
            "# comment\n\
                    web1,10.0.0.1 ssh-ed25519 AAAA1\n\
                    {hashed} ssh-ed25519 AAAA2\n\
                    [web1]:2222 ssh-ed25519 AAAA3\n\
                    @revoked web1 ssh-ed25519 AAAA4\n\
                    *.example.org,!bad.example.org ssh-rsa AAAA5\n\
                    web2 ssh-ed25519 AAAA6\n\
                    \n\
                    10.0.0.1,WEB1 ecdsa-sha2-nistp256 AAAA7\n\
                    [web?]:22* ssh-ed25519 AAAA8\n\
                    |1|bad|line ssh-ed25519 AAAA0\n\
                    @cert-authority *.example.org ssh-ed25519 AAAA9\n"
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
                .map(|l| l.split_whitespace().nth(2).unwrap().to_owned())
                .collect()
        };
        assert_eq!(keys("web1"), ["AAAA1", "AAAA2", "AAAA7"]);
        assert_eq!(keys("[web1]:2222"), ["AAAA3", "AAAA8"]);
        assert_eq!(keys("web2"), ["AAAA6"]);
        assert_eq!(keys("a.example.org"), ["AAAA5"]);
        assert!(keys("bad.example.org").is_empty());
        // Pattern and hashed lines reach libssh2 naming the host itself.
        assert_eq!(lines("A.example.org")[0], "A.example.org ssh-rsa AAAA5");
        assert_eq!(lines("web1")[1], "web1 ssh-ed25519 AAAA2");
        assert_eq!(&*index.revoked[0], "web1 ssh-ed25519 AAAA4");
        assert_eq!(&*index.authorities[0], "*.example.org ssh-ed25519 AAAA9");
        let ca = |host: &str| for_host(&index.authorities[0], host).map(|l| l.to_string());
        assert_eq!(
            ca("x.example.org").unwrap(),
            "x.example.org ssh-ed25519 AAAA9"
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
