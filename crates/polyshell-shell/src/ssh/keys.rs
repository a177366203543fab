//! Public key authentication with the private key parsed once per run and signed with in
//! process.
//!
//! `userauth_pubkey_file` makes libssh2 decode the key file again for every connection, and
//! with OpenSSL 3 that decode (every decoder tried in turn before libssh2's own OpenSSH-format
//! parser) was over half of the client's CPU time per site. Instead, an unencrypted ed25519
//! key (the kind `ssh-keygen` makes by default) is parsed once and libssh2's callback
//! interface (`libssh2_userauth_publickey`) asks us for each signature. Any other key
//! (encrypted, RSA, ECDSA, security keys) still goes through libssh2's file authentication.
//!
//! The key stays in this process's memory for the run, zeroed on drop; it is never logged.

use super::cache::FileCache;
use ed25519_dalek::{Signer, SigningKey};
use ssh2::Session;
use ssh_key::private::KeypairData;
use std::convert::Infallible;
use std::ffi::{c_char, c_int, c_uchar, c_void, CString};
use std::path::Path;
use std::sync::Arc;

/// A private key this process signs with itself.
pub(crate) struct InProcessKey {
    /// The public key in SSH wire encoding (`string "ssh-ed25519", string key`).
    public: Vec<u8>,
    signing: SigningKey,
}

/// The in-process form of the key at `path`, if it has one (see the module docs); `None`
/// also for a file that cannot be read, which libssh2 then reports.
pub(crate) fn in_process(path: &Path) -> Arc<Option<InProcessKey>> {
    static CACHE: FileCache<Option<InProcessKey>> = FileCache::new();
    let loaded = CACHE.get(path, |path| {
        Ok::<_, Infallible>(std::fs::read(path).ok().and_then(|bytes| parse(&bytes)))
    });
    match loaded {
        Ok(key) => key,
        Err(never) => match never {},
    }
}

fn parse(bytes: &[u8]) -> Option<InProcessKey> {
    let key = ssh_key::PrivateKey::from_openssh(bytes).ok()?;
    if key.is_encrypted() {
        return None;
    }
    let KeypairData::Ed25519(pair) = key.key_data() else {
        return None;
    };
    Some(InProcessKey {
        public: key.public_key().to_bytes().ok()?,
        signing: SigningKey::from(&pair.private),
    })
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

const LIBSSH2_ERROR_ALLOC: c_int = -6;

/// libssh2's signing callback: signs `data` with the `SigningKey` that `*abstract_` points
/// to, into a buffer from `malloc` (libssh2 frees it with its default allocator, `free`,
/// which `ssh2` sessions use).
unsafe extern "C" fn sign(
    _session: *mut c_void,
    sig: *mut *mut c_uchar,
    sig_len: *mut usize,
    data: *const c_uchar,
    data_len: usize,
    abstract_: *mut *mut c_void,
) -> c_int {
    // SAFETY: `authenticate` passes a pointer to a live SigningKey, and libssh2 passes the
    // data it wants signed with its length.
    let key = unsafe { &*(*abstract_ as *const SigningKey) };
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

impl InProcessKey {
    /// One step of public key authentication as `user` (non-blocking: `EAGAIN` means call
    /// again when the socket is ready, with the same arguments).
    pub(crate) fn userauth(&self, session: &Session, user: &CString) -> Result<(), ssh2::Error> {
        let rc = {
            let mut raw = session.raw();
            let raw: *mut _ = &mut *raw;
            let mut key = &self.signing as *const SigningKey as *mut c_void;
            // SAFETY: the session pointer is valid while `raw` (its lock) is held; the key
            // outlives the call; libssh2 copies what it keeps of the other arguments.
            unsafe {
                libssh2_userauth_publickey(
                    raw.cast(),
                    user.as_ptr(),
                    self.public.as_ptr(),
                    self.public.len(),
                    Some(sign),
                    &mut key,
                )
            }
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(ssh2::Error::from_session_error(session, rc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    fn keygen(dir: &Path, name: &str, kind: &str, passphrase: &str) -> Vec<u8> {
        let path = dir.join(name);
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", passphrase, "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen (OpenSSH's client tools) must be installed");
        assert!(status.success());
        std::fs::read(path).unwrap()
    }

    #[test]
    fn only_unencrypted_ed25519_keys_are_signed_in_process() {
        let dir = tempfile::tempdir().unwrap();
        assert!(parse(&keygen(dir.path(), "plain", "ed25519", "")).is_some());
        assert!(parse(&keygen(dir.path(), "locked", "ed25519", "secret")).is_none());
        assert!(parse(&keygen(dir.path(), "ecdsa", "ecdsa", "")).is_none());
        assert!(parse(b"not a key").is_none());
    }

    #[test]
    fn the_callback_signs_what_libssh2_passes_with_the_key_it_points_to() {
        let dir = tempfile::tempdir().unwrap();
        let key = parse(&keygen(dir.path(), "plain", "ed25519", "")).unwrap();
        let public = std::fs::read_to_string(dir.path().join("plain.pub")).unwrap();
        let public = ssh_key::PublicKey::from_openssh(&public).unwrap();
        assert_eq!(key.public, public.to_bytes().unwrap());

        let data = b"session id and userauth request";
        let mut abstract_ = &key.signing as *const SigningKey as *mut c_void;
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
        let verifying = key.signing.verifying_key();
        assert!(verifying.verify(data, &signature).is_ok());
        assert!(verifying.verify(b"other data", &signature).is_err());
    }
}
