//! File transfer over SFTP, on a connection of its own in blocking mode on a blocking
//! thread (a transfer is one long sequential job; commands keep their own connection).
//!
//! The rule, the same every time: uploading (downloading) a directory to `to` makes `to` a
//! copy of it — its contents land in `to`, `to` and missing parents are created, existing
//! files are overwritten. A file goes to `to`, or into `to` when `to` is a directory.
//! File modes are kept; symbolic links are copied as links.

use super::driver::Connection;
use super::target::{self, SshOptions};
use crate::error::ErrorKind;
use ssh2::{FileStat, OpenFlags, OpenType, Session, Sftp};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Large buffers let libssh2 pipeline many SFTP packets (30000 bytes each) per round trip.
const BUFFER: usize = 30_000 * 64;
/// A stalled transfer fails after this long without progress.
const STALL_MS: u32 = 120_000;

async fn session(opts: SshOptions) -> Result<Session, ErrorKind> {
    let target = target::resolve(&opts)?;
    let mut via: Option<Connection> = None;
    for spec in &target.jumps {
        let jump = target::resolve(&target::jump_options(spec, &opts))?;
        via = Some(super::connect_one(&jump, via.as_ref()).await?);
    }
    let _slot = super::handshake_slots().acquire().await;
    let (fd, session) = super::connect::session(&target, via.as_ref()).await?;
    // Stop watching the socket before libssh2 takes it over in blocking mode.
    drop(fd);
    Ok(session)
}

fn err(path: &Path, e: impl std::fmt::Display) -> ErrorKind {
    ErrorKind::Transfer(format!("{}: {e}", path.display()))
}

async fn blocking<T: Send + 'static>(
    opts: SshOptions,
    job: impl FnOnce(&Sftp) -> Result<T, ErrorKind> + Send + 'static,
) -> Result<T, ErrorKind> {
    let session = session(opts).await?;
    tokio::task::spawn_blocking(move || {
        session.set_blocking(true);
        session.set_timeout(STALL_MS);
        let sftp = session
            .sftp()
            .map_err(|e| ErrorKind::Transfer(format!("cannot start SFTP: {e}")))?;
        let result = job(&sftp);
        drop(sftp);
        let _ = session.disconnect(None, "done", None);
        result
    })
    .await
    .map_err(|e| ErrorKind::Transfer(format!("transfer thread failed: {e}")))?
}

pub(crate) async fn upload(opts: SshOptions, local: &Path, remote: &str) -> Result<(), ErrorKind> {
    let local = local.to_owned();
    let remote = PathBuf::from(remote);
    blocking(opts, move |sftp| {
        let meta = std::fs::symlink_metadata(&local).map_err(|e| err(&local, e))?;
        if meta.is_dir() {
            mkdir_p(sftp, &remote)?;
            put_tree(sftp, &local, &remote)
        } else {
            let to = match sftp.stat(&remote) {
                Ok(st) if st.is_dir() => remote.join(local.file_name().unwrap_or_default()),
                _ => remote.clone(),
            };
            if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
                mkdir_p(sftp, parent)?;
            }
            put_file(sftp, &local, &to, meta.permissions().mode())
        }
    })
    .await
}

fn mkdir_p(sftp: &Sftp, dir: &Path) -> Result<(), ErrorKind> {
    if sftp.stat(dir).map(|st| st.is_dir()).unwrap_or(false) {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        mkdir_p(sftp, parent)?;
    }
    match sftp.mkdir(dir, 0o755) {
        Ok(()) => Ok(()),
        Err(_) if sftp.stat(dir).map(|st| st.is_dir()).unwrap_or(false) => Ok(()),
        Err(e) => Err(err(dir, e)),
    }
}

fn put_tree(sftp: &Sftp, from: &Path, to: &Path) -> Result<(), ErrorKind> {
    let entries = std::fs::read_dir(from).map_err(|e| err(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(from, e))?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path).map_err(|e| err(&path, e))?;
            let _ = sftp.unlink(&dest);
            // OpenSSH's sftp-server takes symlink's arguments in reverse order.
            sftp.symlink(&link, &dest).map_err(|e| err(&dest, e))?;
        } else if meta.is_dir() {
            mkdir_p(sftp, &dest)?;
            put_tree(sftp, &path, &dest)?;
            set_mode(sftp, &dest, meta.permissions().mode())?;
        } else {
            put_file(sftp, &path, &dest, meta.permissions().mode())?;
        }
    }
    Ok(())
}

fn set_mode(sftp: &Sftp, path: &Path, mode: u32) -> Result<(), ErrorKind> {
    let stat = FileStat {
        size: None,
        uid: None,
        gid: None,
        perm: Some(mode & 0o7777),
        atime: None,
        mtime: None,
    };
    sftp.setstat(path, stat).map_err(|e| err(path, e))
}

fn put_file(sftp: &Sftp, from: &Path, to: &Path, mode: u32) -> Result<(), ErrorKind> {
    let mut src = std::fs::File::open(from).map_err(|e| err(from, e))?;
    let mut dst = sftp
        .open_mode(
            to,
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            (mode & 0o7777) as i32,
            OpenType::File,
        )
        .map_err(|e| err(to, e))?;
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = src.read(&mut buf).map_err(|e| err(from, e))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).map_err(|e| err(to, e))?;
    }
    drop(dst);
    // The remote umask applied at creation; the source's mode is what we keep.
    set_mode(sftp, to, mode)
}

pub(crate) async fn download(
    opts: SshOptions,
    remote: &str,
    local: &Path,
) -> Result<(), ErrorKind> {
    let local = local.to_owned();
    let remote = PathBuf::from(remote);
    blocking(opts, move |sftp| {
        let stat = sftp.stat(&remote).map_err(|e| err(&remote, e))?;
        if stat.is_dir() {
            std::fs::create_dir_all(&local).map_err(|e| err(&local, e))?;
            get_tree(sftp, &remote, &local)
        } else {
            let to = if local.is_dir() {
                local.join(remote.file_name().unwrap_or_default())
            } else {
                local.clone()
            };
            if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
            }
            get_file(sftp, &remote, &to, stat.perm.unwrap_or(0o644))
        }
    })
    .await
}

fn get_tree(sftp: &Sftp, from: &Path, to: &Path) -> Result<(), ErrorKind> {
    for (path, _) in sftp.readdir(from).map_err(|e| err(from, e))? {
        let name = path.file_name().unwrap_or_default();
        let dest = to.join(name);
        let stat = sftp.lstat(&path).map_err(|e| err(&path, e))?;
        if stat.file_type().is_symlink() {
            let link = sftp.readlink(&path).map_err(|e| err(&path, e))?;
            let _ = std::fs::remove_file(&dest);
            std::os::unix::fs::symlink(&link, &dest).map_err(|e| err(&dest, e))?;
        } else if stat.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| err(&dest, e))?;
            get_tree(sftp, &path, &dest)?;
            let mode = stat.perm.unwrap_or(0o755) & 0o7777;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                .map_err(|e| err(&dest, e))?;
        } else {
            get_file(sftp, &path, &dest, stat.perm.unwrap_or(0o644))?;
        }
    }
    Ok(())
}

fn get_file(sftp: &Sftp, from: &Path, to: &Path, mode: u32) -> Result<(), ErrorKind> {
    let mut src = sftp.open(from).map_err(|e| err(from, e))?;
    let mut dst = std::fs::File::create(to).map_err(|e| err(to, e))?;
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = src.read(&mut buf).map_err(|e| err(from, e))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).map_err(|e| err(to, e))?;
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| err(to, e))
}
