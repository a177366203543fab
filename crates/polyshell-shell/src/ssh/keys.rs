//! Private key files: read and parsed once per run, signed with in process where we can.
//!
//! `userauth_pubkey_file` makes libssh2 decode the key file again for every connection, and
//! with OpenSSL 3 that decode (every decoder tried in turn before libssh2's own OpenSSH-format
//! parser) was over half of the client's CPU time per site. Instead, an ed25519 key (the kind
//! `ssh-keygen` makes by default) is parsed once and libssh2's callback interface
//! (`libssh2_userauth_publickey`) asks us for each signature. Other unencrypted keys (RSA,
//! ECDSA) go through libssh2's file authentication; other keys once decrypted, through
//! libssh2's in-memory authentication.
//!
//! An encrypted OpenSSH-format key is decrypted once per run, with the passphrase asked by
//! [`KeyPassphrases`](super::auth::KeyPassphrases). Before asking, the server is asked whether
//! it would take the key at all (the public half is in the clear), as OpenSSH does: a key the
//! server does not want costs no prompt.
//!
//! Keys stay in this process's memory for the run, zeroed on drop; they are never logged.

use super::cache::FileCache;
use ed25519_dalek::{Signer, SigningKey};
use ssh2::Session;
use ssh_key::private::KeypairData;
use ssh_key::{LineEnding, PrivateKey};
use std::cell::Cell;
use std::convert::Infallible;
use std::ffi::{c_char, c_int, c_uchar, c_void, CString};
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// What a private key file holds, as far as authentication cares.
pub(crate) enum KeyFile {
    /// There is no such file.
    Missing,
    /// The file cannot be read (the reason).
    Unreadable(String),
    /// An OpenSSH-format key: its public half (wire encoding, always readable), the key
    /// itself, encrypted or not, and for an unencrypted ed25519 key its signer, made once
    /// per run (not once per connection).
    OpenSsh {
        public: Vec<u8>,
        key: Box<PrivateKey>,
        signer: Option<Box<SigningKey>>,
    },
    /// Another format (PEM, PKCS#8), left to libssh2; `encrypted` when its header says so.
    Legacy { encrypted: bool },
    /// A public key (`IdentityFile ~/.ssh/id.pub`, as hardware-key and password-manager
    /// agents are set up): it selects the agent's key; there is nothing to sign with here.
    PublicOnly { public: Vec<u8> },
}

impl KeyFile {
    /// The public key in wire encoding, when the file gives it without a passphrase (the
    /// OpenSSH format and a public key file do; otherwise the `.pub` file beside it, as
    /// OpenSSH reads it even when the private key is missing).
    pub(crate) fn public(&self, path: &Path) -> Option<Vec<u8>> {
        match self {
            KeyFile::OpenSsh { public, .. } | KeyFile::PublicOnly { public } => {
                Some(public.clone())
            }
            _ => public_file(&super::auth::suffixed(path, ".pub")),
        }
    }

    #[cfg(test)]
    fn encrypted(&self) -> bool {
        match self {
            KeyFile::OpenSsh { key, .. } => key.is_encrypted(),
            KeyFile::Legacy { encrypted } => *encrypted,
            _ => false,
        }
    }
}

/// The wire encoding of the public key (or certificate) in an OpenSSH `.pub` file.
pub(crate) fn public_file(path: &Path) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).ok()?;
    let blob = text.split_whitespace().nth(1)?;
    base64::engine::general_purpose::STANDARD.decode(blob).ok()
}

/// The key file at `path`, read once per run (cached by path and modification time).
pub(crate) fn load(path: &Path) -> Arc<KeyFile> {
    static CACHE: FileCache<KeyFile> = FileCache::new();
    let loaded = CACHE.get(path, |path| Ok::<_, Infallible>(read(path)));
    match loaded {
        Ok(key) => key,
        Err(never) => match never {},
    }
}

fn read(path: &Path) -> KeyFile {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return KeyFile::Missing,
        Err(e) => return KeyFile::Unreadable(e.to_string()),
    };
    match PrivateKey::from_openssh(&*bytes) {
        Ok(key) => match key.public_key().to_bytes() {
            Ok(public) => {
                let signer = match key.key_data() {
                    KeypairData::Ed25519(pair) if !key.is_encrypted() => {
                        Some(Box::new(SigningKey::from(&pair.private)))
                    }
                    _ => None,
                };
                KeyFile::OpenSsh {
                    public,
                    key: Box::new(key),
                    signer,
                }
            }
            Err(e) => KeyFile::Unreadable(format!("its public key cannot be encoded: {e}")),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(public) = ssh_key::PublicKey::from_openssh(text.trim()) {
                if let Ok(public) = public.to_bytes() {
                    return KeyFile::PublicOnly { public };
                }
            }
            KeyFile::Legacy {
                encrypted: text.contains("Proc-Type: 4,ENCRYPTED")
                    || text.contains("BEGIN ENCRYPTED PRIVATE KEY"),
            }
        }
    }
}

/// A key ready to sign with: decrypted, in this process.
pub(crate) enum Unlocked {
    /// ed25519: signed here.
    Ed25519(SigningKey),
    /// Another kind, handed to libssh2 from memory in OpenSSH format.
    Pem(Zeroizing<String>),
}

impl Unlocked {
    /// The usable form of an unencrypted (or decrypted) OpenSSH-format key.
    pub(crate) fn from_key(key: &PrivateKey) -> Result<Unlocked, String> {
        match key.key_data() {
            KeypairData::Ed25519(pair) => Ok(Unlocked::Ed25519(SigningKey::from(&pair.private))),
            _ => key
                .to_openssh(LineEnding::LF)
                .map(Unlocked::Pem)
                .map_err(|e| format!("cannot re-encode the decrypted key: {e}")),
        }
    }
}

/// `key` decrypted with `passphrase`; `Err(None)` for a wrong passphrase.
pub(crate) fn decrypt(key: &PrivateKey, passphrase: &[u8]) -> Result<Unlocked, Option<String>> {
    match key.decrypt(passphrase) {
        Ok(plain) => Unlocked::from_key(&plain).map_err(Some),
        Err(ssh_key::Error::Crypto) => Err(None),
        Err(e) => Err(Some(format!("cannot decrypt: {e}"))),
    }
}

/// The in-process signer of an unencrypted ed25519 OpenSSH key file, if it is one.
pub(crate) fn plain_ed25519(file: &KeyFile) -> Option<&SigningKey> {
    match file {
        KeyFile::OpenSsh { signer, .. } => signer.as_deref(),
        _ => None,
    }
}

type SignCallback = unsafe extern "C" fn(
    session: *mut c_void,
    sig: *mut *mut c_uchar,
    sig_len: *mut usize,
    data: *const c_uchar,
    data_len: usize,
    abstract_: *mut *mut c_void,
) -> c_int;

extern "C" {
    // Public libssh2 API (since 1.2.x), linked through libssh2-sys; the `ssh2` crate does not
    // wrap it.
    fn libssh2_userauth_publickey(
        session: *mut c_void,
        username: *const c_char,
        pubkeydata: *const c_uchar,
        pubkeydata_len: usize,
        sign_callback: Option<SignCallback>,
        abstract_: *mut *mut c_void,
    ) -> c_int;
}

const LIBSSH2_ERROR_ALLOC: c_int = libssh2_sys::LIBSSH2_ERROR_ALLOC;

/// What the signing callback gets: the key to sign with (none: only find out whether the
/// server would take the public key), and whether it was asked.
struct SignContext<'a> {
    key: Option<&'a SigningKey>,
    asked: Cell<bool>,
}

/// libssh2's signing callback: signs `data` with the key of the `SignContext` that
/// `*abstract_` points to, into a buffer from `malloc` (libssh2 frees it with its default
/// allocator, `free`, which `ssh2` sessions use). libssh2 calls it only once the server has
/// said it would accept the public key.
unsafe extern "C" fn sign(
    _session: *mut c_void,
    sig: *mut *mut c_uchar,
    sig_len: *mut usize,
    data: *const c_uchar,
    data_len: usize,
    abstract_: *mut *mut c_void,
) -> c_int {
    // SAFETY: `userauth` passes a pointer to a live SignContext, and libssh2 passes the
    // data it wants signed with its length.
    let context = unsafe { &*(*abstract_ as *const SignContext) };
    context.asked.set(true);
    let Some(key) = context.key else {
        return -1;
    };
    let data = unsafe { std::slice::from_raw_parts(data, data_len) };
    let signature = key.sign(data).to_bytes();
    // SAFETY: a plain allocation, filled below before libssh2 reads it.
    let out = unsafe { libc::malloc(signature.len()) } as *mut c_uchar;
    if out.is_null() {
        return LIBSSH2_ERROR_ALLOC;
    }
    // SAFETY: `out` has room for the signature; `sig` and `sig_len` are libssh2's out-params.
    unsafe {
        std::ptr::copy_nonoverlapping(signature.as_ptr(), out, signature.len());
        *sig = out;
        *sig_len = signature.len();
    }
    0
}

/// One step of public key authentication as `user` with `public` (a key or certificate in
/// wire encoding), signing with `key`; with no key, the step only asks the server whether it
/// would take `public`. Non-blocking: `EAGAIN` means call again when the socket is ready, with
/// the same arguments. The flag tells whether the server accepted the public key (and so
/// asked for a signature).
pub(crate) fn userauth(
    session: &Session,
    user: &CString,
    public: &[u8],
    key: Option<&SigningKey>,
) -> (Result<(), ssh2::Error>, bool) {
    let context = SignContext {
        key,
        asked: Cell::new(false),
    };
    let rc = {
        let mut raw = session.raw();
        let raw: *mut _ = &mut *raw;
        let mut abstract_ = &context as *const SignContext as *mut c_void;
        // SAFETY: the session pointer is valid while `raw` (its lock) is held; the context
        // outlives the call; libssh2 copies what it keeps of the other arguments.
        unsafe {
            libssh2_userauth_publickey(
                raw.cast(),
                user.as_ptr(),
                public.as_ptr(),
                public.len(),
                Some(sign),
                &mut abstract_,
            )
        }
    };
    let result = if rc == 0 {
        Ok(())
    } else {
        Err(ssh2::Error::from_session_error(session, rc))
    };
    (result, context.asked.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    fn keygen(dir: &Path, name: &str, kind: &str, passphrase: &str) {
        let path = dir.join(name);
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", passphrase, "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen (OpenSSH's client tools) must be installed");
        assert!(status.success());
    }

    fn plain(path: &Path) -> Option<SigningKey> {
        plain_ed25519(&read(path)).cloned()
    }

    #[test]
    fn only_unencrypted_ed25519_keys_are_signed_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(d, "plain", "ed25519", "");
        keygen(d, "locked", "ed25519", "secret");
        keygen(d, "ecdsa", "ecdsa", "");
        std::fs::write(d.join("junk"), "not a key").unwrap();
        assert!(plain(&d.join("plain")).is_some());
        assert!(plain(&d.join("locked")).is_none());
        assert!(plain(&d.join("ecdsa")).is_none());
        assert!(plain(&d.join("junk")).is_none());
        assert!(matches!(
            read(&d.join("junk")),
            KeyFile::Legacy { encrypted: false }
        ));
        assert!(matches!(read(&d.join("none")), KeyFile::Missing));
        // A public key as the identity: it only selects the agent's key.
        let public = read(&d.join("plain.pub"));
        assert!(matches!(public, KeyFile::PublicOnly { .. }));
        assert_eq!(
            public.public(&d.join("plain.pub")),
            read(&d.join("plain")).public(&d.join("plain"))
        );
        // A missing private key with its .pub beside it still names its public half.
        std::fs::rename(d.join("plain"), d.join("gone")).unwrap();
        let missing = read(&d.join("plain"));
        assert!(matches!(missing, KeyFile::Missing));
        assert_eq!(
            missing.public(&d.join("plain")),
            public.public(&d.join("plain.pub"))
        );
    }

    #[test]
    fn an_encrypted_key_shows_its_public_half_and_decrypts_with_the_right_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for kind in ["ed25519", "ecdsa"] {
            keygen(d, kind, kind, "right horse");
            let file = read(&d.join(kind));
            assert!(file.encrypted(), "{kind}");
            let public = std::fs::read_to_string(d.join(format!("{kind}.pub"))).unwrap();
            let public = ssh_key::PublicKey::from_openssh(&public).unwrap();
            assert_eq!(file.public(&d.join(kind)), Some(public.to_bytes().unwrap()));
            let KeyFile::OpenSsh { key, .. } = &*Arc::new(file) else {
                panic!("{kind}: not read as an OpenSSH key")
            };
            assert!(matches!(decrypt(key, b"wrong horse"), Err(None)), "{kind}");
            match (kind, decrypt(key, b"right horse")) {
                ("ed25519", Ok(Unlocked::Ed25519(_))) => {}
                ("ecdsa", Ok(Unlocked::Pem(pem))) => {
                    assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
                    assert!(!PrivateKey::from_openssh(pem.as_bytes())
                        .unwrap()
                        .is_encrypted());
                }
                (kind, _) => panic!("{kind}: the right passphrase did not give a usable key"),
            }
        }
    }

    #[test]
    fn the_callback_signs_what_libssh2_passes_with_the_key_it_points_to() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), "plain", "ed25519", "");
        let key = plain(&dir.path().join("plain")).unwrap();
        let data = b"session id and userauth request";
        let context = SignContext {
            key: Some(&key),
            asked: Cell::new(false),
        };
        let mut abstract_ = &context as *const SignContext as *mut c_void;
        let (mut sig, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the arguments are what libssh2 passes; the buffer is freed below.
        let rc = unsafe {
            sign(
                std::ptr::null_mut(),
                &mut sig,
                &mut len,
                data.as_ptr(),
                data.len(),
                &mut abstract_,
            )
        };
        assert_eq!((rc, len), (0, 64));
        // SAFETY: `sign` filled `len` bytes at `sig`, from malloc.
        let bytes = unsafe { std::slice::from_raw_parts(sig, len) }.to_vec();
        unsafe { libc::free(sig.cast()) };
        let signature = Signature::from_slice(&bytes).unwrap();
        assert!(context.asked.get());
        let verifying = key.verifying_key();
        assert!(verifying.verify(data, &signature).is_ok());
        assert!(verifying.verify(b"other data", &signature).is_err());
    }
}
