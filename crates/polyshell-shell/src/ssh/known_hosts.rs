//! known_hosts files as OpenSSH reads them (sshd(8), SSH_KNOWN_HOSTS FILE FORMAT): plain,
//! hashed and pattern entries, and the `@revoked` and `@cert-authority` markers.
//!
//! libssh2 compares keys and matches hashed names (`|1|salt|hash`), but knows neither host
//! patterns (`*`, `?`, `!negation`) nor markers. So each file is indexed once per run, and for
//! one host polyshell hands libssh2 only the lines that may concern it: plain lines naming
//! it, hashed lines (libssh2 decides), and pattern lines whose patterns match, rewritten with
//! the host's own name. A fleet's known_hosts is thus not re-fed whole for every site.

use super::cache::FileCache;
use super::target::Target;
use std::collections::HashMap;
use std::sync::Arc;

/// How a line names its hosts.
enum Hosts {
    /// Hashed (`|1|...`): only libssh2 can tell.
    Hashed,
    /// Patterns or negations: matched here.
    Patterns(Arc<str>),
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
            if hosts.starts_with("|1|") {
                index.general.push((n, Hosts::Hashed, line));
            } else if is_pattern(hosts) {
                index.general.push((n, Hosts::Patterns(hosts.into()), line));
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
            match hosts {
                Hosts::Hashed => lines.push((*n, line.clone())),
                Hosts::Patterns(patterns) => {
                    if let Some(line) = for_host(patterns, line, label) {
                        lines.push((*n, line));
                    }
                }
            }
        }
        lines.sort_unstable_by_key(|(n, _)| *n);
        lines.dedup_by_key(|(n, _)| *n);
        lines.into_iter().map(|(_, line)| line).collect()
    }
}

/// `line` (whose host field is `hosts`) for libssh2 when it concerns `label`: hashed lines as
/// they are, pattern and plain lines rewritten to name `label`; `None` when it does not.
fn for_host(hosts: &str, line: &str, label: &str) -> Option<Arc<str>> {
    if hosts.starts_with("|1|") {
        return Some(line.into());
    }
    host_matches(hosts, label).then(|| {
        let rest = line[hosts.len()..].trim_start();
        format!("{label} {rest}").into()
    })
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
    /// `@revoked` entries that may name it (marker taken off, patterns rewritten).
    pub revoked: Vec<Arc<str>>,
    /// `@cert-authority` entries as they are (marker taken off).
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

/// Whether an `@cert-authority` line's hosts field names `label` (hashed fields: `None`,
/// only libssh2 can tell).
pub(crate) fn authority_names(line: &str, label: &str) -> Option<bool> {
    let hosts = line.split_whitespace().next()?;
    if hosts.starts_with("|1|") {
        None
    } else {
        Some(host_matches(hosts, label))
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
            out.revoked.extend(index.revoked.iter().filter_map(|line| {
                let hosts = line.split_whitespace().next()?;
                for_host(hosts, line, &label)
            }));
            out.authorities.extend(index.authorities.iter().cloned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_the_host_s_lines_hashed_lines_and_matching_patterns_in_file_order() {
        let text = "# comment\n\
                    web1,10.0.0.1 ssh-ed25519 AAAA1\n\
                    |1|c2FsdA==|aGFzaA== ssh-ed25519 AAAA2\n\
                    [web1]:2222 ssh-ed25519 AAAA3\n\
                    @revoked web1 ssh-ed25519 AAAA4\n\
                    *.example.org,!bad.example.org ssh-rsa AAAA5\n\
                    web2 ssh-ed25519 AAAA6\n\
                    \n\
                    10.0.0.1,WEB1 ecdsa-sha2-nistp256 AAAA7\n\
                    [web?]:22* ssh-ed25519 AAAA8\n\
                    @cert-authority *.example.org ssh-ed25519 AAAA9\n";
        let index = KnownHosts::parse(text);
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
        assert_eq!(keys("[web1]:2222"), ["AAAA2", "AAAA3", "AAAA8"]);
        assert_eq!(keys("web2"), ["AAAA2", "AAAA6"]);
        assert_eq!(keys("a.example.org"), ["AAAA2", "AAAA5"]);
        assert_eq!(keys("bad.example.org"), ["AAAA2"]);
        // A pattern line reaches libssh2 naming the host itself.
        assert_eq!(lines("A.example.org")[1], "A.example.org ssh-rsa AAAA5");
        assert_eq!(&*index.revoked[0], "web1 ssh-ed25519 AAAA4");
        assert_eq!(&*index.authorities[0], "*.example.org ssh-ed25519 AAAA9");
        assert_eq!(
            authority_names(&index.authorities[0], "x.example.org"),
            Some(true)
        );
        assert_eq!(
            authority_names(&index.authorities[0], "example.org"),
            Some(false)
        );
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
