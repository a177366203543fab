//! Public key authentication in OpenSSH's order, with a report of every key tried.
//!
//! 1. Configured identity files whose key (or certificate) is in ssh-agent: through the agent.
//! 2. Unless `IdentitiesOnly yes`: the agent's other keys.
//! 3. The identity files not in the agent: each certificate of the key first (its
//!    `CertificateFile`s and `KEY-cert.pub`), then the key. An encrypted key is decrypted once
//!    per run ([`KeyPassphrases`]), and only once a server has said it would take the key.
//!
//! Every step that fails adds a line to the error (`KEY: not accepted by the server`, `KEY:
//! key is encrypted and ...`), so an operator sees what was offered and why each failed.

use super::keys::{self, KeyFile, Unlocked};
use super::nonblocking::{is_fatal, retry, SocketFd};
use super::target::{AgentChoice, Target};
use crate::error::ErrorKind;
use polyshell_auth::{
    AskpassPrompter, Console, NoPrompter, PromptError, PromptKind, PromptRequest, Prompter,
    TerminalPrompter, MAX_TRIES,
};
use secrecy::ExposeSecret;
use ssh2::Session;
use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::sync::OnceCell;

/// The passphrases of encrypted key files, asked once per key for a whole run: while one
/// site asks, every other site needing the key waits for that answer; a wrong passphrase is
/// asked again, up to [`MAX_TRIES`] answers; an aborted prompt (Ctrl-C) or a source that
/// cannot answer fails every site needing the key, at once. What is kept is the decrypted
/// key (zeroed on drop), never the passphrase.
///
/// ```
/// use polyshell_auth::ScriptedPrompter;
/// use polyshell_shell::{KeyPassphrases, SshOptions};
/// use std::sync::Arc;
///
/// // One cache for every site of the run (tests script the answers; the CLI asks on the
/// // terminal or through SSH_ASKPASS).
/// let passphrases = KeyPassphrases::new(Arc::new(ScriptedPrompter::new(["s3cret"])));
/// let mut web1 = SshOptions::new("web1");
/// web1.passphrases = Some(passphrases.clone());
/// let mut web2 = SshOptions::new("web2");
/// web2.passphrases = Some(passphrases);
/// ```
pub struct KeyPassphrases {
    prompter: Arc<dyn Prompter>,
    keys: Mutex<HashMap<PathBuf, Arc<KeyCell>>>,
    prompts: AtomicU64,
}

type KeyCell = OnceCell<Result<Arc<Unlocked>, String>>;

impl std::fmt::Debug for KeyPassphrases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPassphrases")
            .field("prompts", &self.prompts())
            .finish_non_exhaustive()
    }
}

impl KeyPassphrases {
    /// Passphrases asked through `prompter`.
    pub fn new(prompter: Arc<dyn Prompter>) -> Arc<KeyPassphrases> {
        Arc::new(KeyPassphrases {
            prompter,
            keys: Mutex::default(),
            prompts: AtomicU64::new(0),
        })
    }

    /// Where OpenSSH would ask: an `SSH_ASKPASS` program by OpenSSH's rules
    /// ([`AskpassPrompter::from_env`]), else the terminal, else nowhere (an encrypted key not
    /// in ssh-agent then fails with how to make it usable).
    pub fn from_environment() -> Arc<KeyPassphrases> {
        KeyPassphrases::from_environment_with(None)
    }

    /// As [`from_environment`](Self::from_environment), the terminal prompt holding back
    /// `console`'s output while it is up.
    pub fn from_environment_with(console: Option<Console>) -> Arc<KeyPassphrases> {
        let prompter: Arc<dyn Prompter> = if let Some(askpass) = AskpassPrompter::from_env() {
            Arc::new(askpass)
        } else if TerminalPrompter::available() {
            Arc::new(TerminalPrompter::new(console))
        } else {
            Arc::new(NoPrompter {
                hint: NO_TERMINAL.into(),
            })
        };
        KeyPassphrases::new(prompter)
    }

    /// Forgets every decrypted key and every failure: the next site needing a key asks
    /// again (for a program that keeps one cache across runs).
    pub fn forget(&self) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// How many times a passphrase was asked.
    pub fn prompts(&self) -> u64 {
        self.prompts.load(Ordering::SeqCst)
    }

    /// The key at `path` decrypted, asking for its passphrase unless another site already
    /// did; the error says why there is none.
    pub(crate) async fn unlock(
        &self,
        path: &Path,
        key: &ssh_key::PrivateKey,
        site: &str,
    ) -> Result<Arc<Unlocked>, String> {
        let cell = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_owned())
            .or_default()
            .clone();
        cell.get_or_init(|| self.ask(path, key, site)).await.clone()
    }

    async fn ask(
        &self,
        path: &Path,
        key: &ssh_key::PrivateKey,
        site: &str,
    ) -> Result<Arc<Unlocked>, String> {
        let shown = path.display().to_string();
        for attempt in 1..=MAX_TRIES {
            let request = PromptRequest {
                agent: shown.clone(),
                site: site.to_owned(),
                attempt,
                kind: PromptKind::KeyPassphrase { key: shown.clone() },
            };
            self.prompts.fetch_add(1, Ordering::SeqCst);
            let secret = match self.prompter.ask(&request).await {
                Ok(secret) => secret,
                Err(PromptError::Aborted) => return Err("the passphrase prompt was aborted".into()),
                Err(PromptError::Unavailable(why)) => return Err(why),
            };
            let key = key.clone();
            let decrypted = tokio::task::spawn_blocking(move || {
                keys::decrypt(&key, secret.expose_secret().as_bytes())
            })
            .await
            .map_err(|_| "decrypting the key failed".to_owned())?;
            match decrypted {
                Ok(unlocked) => return Ok(Arc::new(unlocked)),
                Err(Some(why)) => return Err(why),
                Err(None) if !self.prompter.can_retry() => {
                    return Err("the passphrase given is wrong".into())
                }
                Err(None) => tracing::warn!(key = %shown, "wrong passphrase for key {shown}"),
            }
        }
        Err(format!("wrong passphrase {MAX_TRIES} times"))
    }
}

/// Why no passphrase can be asked with no terminal, and the ways out.
const NO_TERMINAL: &str = "there is no terminal to ask for its passphrase: add the key to \
     ssh-agent (ssh-add), or run from a terminal (or with SSH_ASKPASS set)";

/// `path` with `suffix` appended to its file name (`id_ed25519` → `id_ed25519.pub`).
pub(crate) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A public key or certificate to offer, and where it comes from.
struct Offer {
    blob: Vec<u8>,
    /// The certificate file, for a certificate.
    cert: Option<PathBuf>,
}

/// One configured identity: the key file, its certificates, and what it offers.
struct Identity<'a> {
    path: &'a Path,
    configured: bool,
    file: Arc<KeyFile>,
    offers: Vec<Offer>,
}

impl<'a> Identity<'a> {
    fn new(path: &'a Path, configured: bool, certificates: &[PathBuf]) -> Identity<'a> {
        let file = keys::load(path);
        let public = file.public(path);
        let mut offers = Vec::new();
        let implicit = suffixed(path, "-cert.pub");
        for cert in certificates.iter().chain([&implicit]) {
            let Some(blob) = keys::public_file(cert) else {
                continue;
            };
            // A certificate belongs to this key when it certifies the same public key.
            let certified = ssh_key::Certificate::from_bytes(&blob).ok().and_then(|c| {
                ssh_key::PublicKey::from(c.public_key().clone())
                    .to_bytes()
                    .ok()
            });
            if public.is_some()
                && certified == public
                && !offers.iter().any(|o: &Offer| o.blob == blob)
            {
                offers.push(Offer {
                    blob,
                    cert: Some(cert.clone()),
                });
            }
        }
        if let Some(blob) = public {
            offers.push(Offer { blob, cert: None });
        }
        Identity {
            path,
            configured,
            file,
            offers,
        }
    }

    fn name(&self, offer: &Offer) -> String {
        match &offer.cert {
            Some(cert) => format!("{} (certificate {})", self.path.display(), cert.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// Why one attempt failed, as the report says it.
fn why(error: &ssh2::Error) -> String {
    match error.code() {
        ssh2::ErrorCode::Session(
            libssh2_sys::LIBSSH2_ERROR_AUTHENTICATION_FAILED
            | libssh2_sys::LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED,
        ) => "not accepted by the server".into(),
        ssh2::ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_FILE) => {
            format!("libssh2 cannot use the key ({})", error.message())
        }
        _ => format!("failed: {}", error.message()),
    }
}

/// The ssh-agent's identities, or none (with a line for the report when the agent was
/// wanted and could not be used).
fn agent_identities(
    session: &Session,
    target: &Target,
    report: &mut Vec<String>,
) -> Option<(ssh2::Agent, Vec<ssh2::PublicKey>)> {
    let path = match &target.agent {
        AgentChoice::None => return None,
        AgentChoice::Env => {
            std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty())?;
            None
        }
        AgentChoice::Path(path) => Some(path.clone()),
    };
    let mut agent = session.agent().ok()?;
    if let Some(path) = &path {
        if agent.set_identity_path(path).is_err() {
            report.push(format!("ssh-agent at {}: unusable path", path.display()));
            return None;
        }
    }
    if let Err(e) = agent.connect().and_then(|()| agent.list_identities()) {
        report.push(format!("ssh-agent: cannot ask it ({})", e.message()));
        return None;
    }
    let identities = agent.identities().unwrap_or_default();
    Some((agent, identities))
}

/// Authenticates `session` as `target.user`, in OpenSSH's order (see the module docs).
pub(crate) async fn authenticate(
    session: &Session,
    fd: &AsyncFd<SocketFd>,
    target: &Target,
) -> Result<(), ErrorKind> {
    let user = target.user.as_str();
    let mut report = Vec::new();
    let failed = |report: Vec<String>| ErrorKind::AuthFailed {
        user: user.to_owned(),
        host: target.addr(),
        tried: if report.is_empty() {
            "no key (no ssh-agent, no identity file found)".into()
        } else {
            report.join("; ")
        },
    };
    let user_c = CString::new(user)
        .map_err(|_| failed(vec!["no key: the user name has a NUL byte".into()]))?;
    let identities: Vec<Identity> = target
        .identities
        .iter()
        .map(|(path, configured)| Identity::new(path, *configured, &target.certificates))
        .collect();
    let mut in_agent = vec![false; identities.len()];

    if let Some((mut agent, keys)) = agent_identities(session, target, &mut report) {
        let mut used = vec![false; keys.len()];
        // 1. Configured keys the agent holds, through the agent.
        for (n, identity) in identities.iter().enumerate() {
            for offer in &identity.offers {
                let Some(k) = keys.iter().position(|k| k.blob() == offer.blob) else {
                    continue;
                };
                in_agent[n] = true;
                if std::mem::replace(&mut used[k], true) {
                    continue;
                }
                tracing::trace!(host = %target.alias, key = %identity.name(offer), "trying a key through ssh-agent");
                match retry(session, fd, || agent.userauth(user, &keys[k])).await {
                    Ok(()) if session.authenticated() => {
                        let _ = agent.disconnect();
                        return Ok(());
                    }
                    Ok(()) => report.push(format!(
                        "{} (in ssh-agent): not accepted by the server",
                        identity.name(offer)
                    )),
                    Err(e) => {
                        report.push(format!(
                            "{} (in ssh-agent): {}",
                            identity.name(offer),
                            why(&e)
                        ));
                        if is_fatal(&e) {
                            return Err(failed(report));
                        }
                    }
                }
            }
        }
        // 2. The agent's other keys, unless IdentitiesOnly.
        if target.identities_only {
            let skipped = used.iter().filter(|u| !**u).count();
            if skipped > 0 {
                tracing::debug!(host = %target.alias, "IdentitiesOnly: {skipped} ssh-agent keys not offered");
            }
        } else {
            let mut rejected = Vec::new();
            for (k, key) in keys.iter().enumerate().filter(|(k, _)| !used[*k]) {
                tracing::trace!(host = %target.alias, key = %key.comment(), "trying an ssh-agent key");
                match retry(session, fd, || agent.userauth(user, &keys[k])).await {
                    Ok(()) if session.authenticated() => {
                        let _ = agent.disconnect();
                        return Ok(());
                    }
                    Ok(()) => rejected.push(key.comment().to_owned()),
                    Err(e) if is_fatal(&e) => {
                        report.push(format!("ssh-agent key `{}`: {}", key.comment(), why(&e)));
                        return Err(failed(report));
                    }
                    Err(_) => rejected.push(key.comment().to_owned()),
                }
            }
            match rejected.len() {
                0 if keys.is_empty() => report.push("ssh-agent: it holds no keys".into()),
                0 => {}
                n => report.push(format!(
                    "ssh-agent: {n} key{} not accepted by the server ({})",
                    if n == 1 { "" } else { "s" },
                    rejected.join(", ")
                )),
            }
        }
        let _ = agent.disconnect();
    }

    // 3. Identity files not in the agent.
    for (identity, _) in identities.iter().zip(&in_agent).filter(|(_, a)| !**a) {
        match try_file(session, fd, target, &user_c, identity, &mut report).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(()) => return Err(failed(report)),
        }
    }
    Err(failed(report))
}

/// Tries one identity file: true when authenticated; `Err` when the connection is gone.
async fn try_file(
    session: &Session,
    fd: &AsyncFd<SocketFd>,
    target: &Target,
    user: &CString,
    identity: &Identity<'_>,
    report: &mut Vec<String>,
) -> Result<bool, ()> {
    let path = identity.path;
    let shown = path.display();
    let user_str = target.user.as_str();
    let outcome = |name: String, result: Result<(), ssh2::Error>, report: &mut Vec<String>| {
        match result {
            Ok(()) if session.authenticated() => return Ok(true),
            Ok(()) => report.push(format!("{name}: not accepted by the server")),
            Err(e) => {
                report.push(format!("{name}: {}", why(&e)));
                if is_fatal(&e) {
                    return Err(());
                }
            }
        }
        Ok(false)
    };
    tracing::trace!(host = %target.alias, key = %shown, "trying a key file");
    match &*identity.file {
        KeyFile::Missing => {
            if identity.configured {
                report.push(format!("{shown}: no such file"));
            }
            Ok(false)
        }
        KeyFile::PublicOnly { .. } => {
            report.push(format!(
                "{shown}: a public key, and ssh-agent does not hold its private key"
            ));
            Ok(false)
        }
        KeyFile::Unreadable(e) => {
            report.push(format!("{shown}: cannot be read ({e})"));
            Ok(false)
        }
        KeyFile::Legacy { encrypted: true } => {
            report.push(format!(
                "{shown}: key is encrypted in the old PEM format, which polyshell cannot decrypt: \
                 add it to ssh-agent, or convert it (ssh-keygen -p -f {shown} keeps the passphrase)"
            ));
            Ok(false)
        }
        KeyFile::Legacy { encrypted: false } => {
            for offer in identity.offers.iter().filter(|o| o.cert.is_some()) {
                let cert = offer.cert.as_deref();
                let result = retry(session, fd, || {
                    session.userauth_pubkey_file(user_str, cert, path, None)
                })
                .await;
                if outcome(identity.name(offer), result, report)? {
                    return Ok(true);
                }
            }
            let result = retry(session, fd, || {
                session.userauth_pubkey_file(user_str, None, path, None)
            })
            .await;
            outcome(shown.to_string(), result, report)
        }
        KeyFile::OpenSsh { key, .. } if !key.is_encrypted() => {
            let signer = keys::plain_ed25519(&identity.file);
            for offer in &identity.offers {
                let result = match signer {
                    Some(signing) => {
                        let (result, _) =
                            retry_userauth(session, fd, user, &offer.blob, Some(signing)).await;
                        result
                    }
                    None => {
                        let cert = offer.cert.as_deref();
                        retry(session, fd, || {
                            session.userauth_pubkey_file(user_str, cert, path, None)
                        })
                        .await
                    }
                };
                if outcome(identity.name(offer), result, report)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        KeyFile::OpenSsh { key, .. } => {
            // Encrypted: ask the server first, decrypt only for a key it would take.
            for offer in &identity.offers {
                let (probe, wanted) = retry_userauth(session, fd, user, &offer.blob, None).await;
                if !wanted {
                    let result = probe.and(Err(ssh2::Error::new(
                        ssh2::ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED),
                        "not accepted",
                    )));
                    if outcome(identity.name(offer), result, report)? {
                        return Ok(true);
                    }
                    continue;
                }
                let unlocked = match target.passphrases.unlock(path, key, &target.alias).await {
                    Ok(unlocked) => unlocked,
                    Err(why) => {
                        report.push(format!(
                            "{}: key is encrypted and {}",
                            identity.name(offer),
                            lowercase_first(&why)
                        ));
                        return Ok(false);
                    }
                };
                let result = match &*unlocked {
                    Unlocked::Ed25519(signing) => {
                        retry_userauth(session, fd, user, &offer.blob, Some(signing))
                            .await
                            .0
                    }
                    Unlocked::Pem(pem) => {
                        let public = offer_text(offer);
                        retry(session, fd, || {
                            session.userauth_pubkey_memory(user_str, public.as_deref(), pem, None)
                        })
                        .await
                    }
                };
                if outcome(identity.name(offer), result, report)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// `userauth` repeated until it does not return `EAGAIN`; the flag says whether the server
/// accepted the public key at any step.
async fn retry_userauth(
    session: &Session,
    fd: &AsyncFd<SocketFd>,
    user: &CString,
    public: &[u8],
    key: Option<&ed25519_dalek::SigningKey>,
) -> (Result<(), ssh2::Error>, bool) {
    let mut wanted = false;
    let result = retry(session, fd, || {
        let (result, asked) = keys::userauth(session, user, public, key);
        wanted |= asked;
        result
    })
    .await;
    (result, wanted)
}

/// The OpenSSH text form of an offer (`TYPE BASE64`), for libssh2's in-memory authentication.
fn offer_text(offer: &Offer) -> Option<String> {
    use base64::Engine;
    let algorithm = {
        let len = u32::from_be_bytes(offer.blob.get(..4)?.try_into().ok()?) as usize;
        std::str::from_utf8(offer.blob.get(4..4 + len)?)
            .ok()?
            .to_owned()
    };
    Some(format!(
        "{algorithm} {}",
        base64::engine::general_purpose::STANDARD.encode(&offer.blob)
    ))
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
