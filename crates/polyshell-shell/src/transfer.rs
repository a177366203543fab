//! Local file copies for local sites, by the same rule as SFTP transfers: a directory copied
//! to `to` makes `to` a copy of it; a file goes to `to`, or into `to` when it is a directory.

use crate::error::ErrorKind;
use std::path::{Path, PathBuf};

/// A local site's side of a transfer: `~` and `~/...` are the home directory, as the login
/// directory is on an SSH site (a directory named `~` is never what was meant).
pub(crate) fn site_path(path: &str) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    match (path, path.strip_prefix("~/")) {
        ("~", _) => home().unwrap_or_else(|| PathBuf::from(path)),
        (_, Some(rest)) => home().map_or_else(|| PathBuf::from(path), |h| h.join(rest)),
        _ => PathBuf::from(path),
    }
}

pub(crate) async fn copy(from: &Path, to: &Path) -> Result<(), ErrorKind> {
    let (from, to) = (from.to_owned(), to.to_owned());
    tokio::task::spawn_blocking(move || copy_blocking(&from, &to))
        .await
        .map_err(|e| ErrorKind::Io(std::io::Error::other(format!("copy thread: {e}"))))?
}

fn err(path: &Path, e: std::io::Error) -> ErrorKind {
    ErrorKind::TransferIo {
        path: path.to_owned(),
        source: e,
    }
}

fn copy_blocking(from: &Path, to: &Path) -> Result<(), ErrorKind> {
    let meta = std::fs::symlink_metadata(from).map_err(|e| err(from, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| err(to, e))?;
        copy_tree(from, to)?;
        // `to` is a copy of the directory: its mode too (set last, it may be read-only).
        std::fs::set_permissions(to, meta.permissions()).map_err(|e| err(to, e))
    } else {
        let dest: PathBuf = if to.is_dir() {
            to.join(from.file_name().unwrap_or_default())
        } else {
            to.to_owned()
        };
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
        }
        std::fs::copy(from, &dest).map_err(|e| err(&dest, e))?;
        Ok(())
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), ErrorKind> {
    // Directories get their modes last, deepest first: a read-only one must not stop the
    // copy of what it holds.
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(from).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(from).to_owned();
            err(&path, e.into())
        })?;
        let path = entry.path();
        let rel = path.strip_prefix(from).unwrap_or(path);
        let dest = to.join(rel);
        let kind = entry.file_type();
        if kind.is_symlink() {
            let link = std::fs::read_link(path).map_err(|e| err(path, e))?;
            let _ = std::fs::remove_file(&dest);
            std::os::unix::fs::symlink(link, &dest).map_err(|e| err(&dest, e))?;
        } else if kind.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| err(&dest, e))?;
            let meta = entry.metadata().map_err(|e| err(path, e.into()))?;
            dirs.push((dest, meta.permissions()));
        } else {
            // std::fs::copy keeps the permission bits.
            std::fs::copy(path, &dest).map_err(|e| err(&dest, e))?;
        }
    }
    for (dir, permissions) in dirs.into_iter().rev() {
        std::fs::set_permissions(&dir, permissions).map_err(|e| err(&dir, e))?;
    }
    Ok(())
}
