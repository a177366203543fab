//! File transfer over any transport that runs commands: a tar stream through one command's
//! standard input (upload) or output (download), on the site's existing connection — no
//! second connection, no second trip through the bastions, and the same code for libssh2
//! and the system `ssh`. The site needs a POSIX `sh` and a `tar` (GNU, busybox or bsdtar).
//!
//! The rule, the same every time: uploading (downloading) a directory to `to` makes `to` a
//! copy of it — its contents land in `to`, `to` and missing parents are created, existing
//! files are overwritten, and `to` gets the directory's own mode. A file goes to `to`, or
//! into `to` when `to` is a directory. Modes are kept; symbolic links are copied as links.

use crate::command::quote;
use crate::error::ErrorKind;
use crate::output::Stream;
use crate::process::{ProcEvent, Process};
use crate::{Command, Transport};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use tokio::sync::mpsc;

/// Bytes per piece moved between the tar thread and the command.
const PIECE: usize = 256 * 1024;
/// Pieces in flight between the tar thread and the command.
const PIECES: usize = 8;
/// How much of the remote command's stderr is kept for an error message.
const STDERR_KEPT: usize = 16 * 1024;

fn err(path: &Path, e: std::io::Error) -> ErrorKind {
    ErrorKind::TransferIo {
        path: path.to_owned(),
        source: e,
    }
}

fn refused(path: &Path, reason: &'static str) -> ErrorKind {
    ErrorKind::TransferRefused {
        path: path.to_owned(),
        reason,
    }
}

/// A remote path as one shell word: `~` and `~/...` are the login directory, a leading `-`
/// cannot be read as an option, everything else is quoted as data.
fn remote_word(path: &str) -> String {
    if path == "~" {
        "\"$HOME\"".into()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("\"$HOME\"/{}", quote(rest))
    } else if path.starts_with('-') {
        quote(&format!("./{path}"))
    } else {
        quote(path)
    }
}

/// Copies `local` (a file or a directory tree) to `remote` on the transport's site.
pub(crate) async fn upload(
    transport: &dyn Transport,
    local: &Path,
    remote: &str,
) -> Result<(), ErrorKind> {
    let meta = std::fs::symlink_metadata(local).map_err(|e| err(local, e))?;
    let to = remote_word(remote);
    let (tx, rx) = mpsc::channel(PIECES);
    let local_owned = local.to_owned();
    let script = if meta.is_dir() {
        tokio::task::spawn_blocking(move || {
            let mut builder = tar::Builder::new(ChannelWriter::new(tx));
            builder.follow_symlinks(false);
            let result = builder
                .append_dir_all(".", &local_owned)
                .and_then(|()| builder.finish())
                .and_then(|()| builder.get_mut().flush());
            if let Err(e) = result {
                builder.get_mut().fail(e);
            }
        });
        format!("mkdir -p {to} && exec tar -x -p -f - -C {to}")
    } else {
        let name = local
            .file_name()
            .map(|n| quote(&n.to_string_lossy()))
            .ok_or_else(|| refused(local, "not a file name"))?;
        let mode = meta.permissions().mode() & 0o7777;
        tokio::task::spawn_blocking(move || {
            // Whole pieces straight from the file (`io::copy` would go 8 KiB at a time).
            let send = |tx: &mpsc::Sender<Piece>| -> std::io::Result<()> {
                let mut file = std::fs::File::open(&local_owned)?;
                loop {
                    let mut piece = vec![0u8; PIECE];
                    let mut filled = 0;
                    while filled < PIECE {
                        match file.read(&mut piece[filled..])? {
                            0 => break,
                            n => filled += n,
                        }
                    }
                    if filled == 0 {
                        return Ok(());
                    }
                    piece.truncate(filled);
                    if tx.blocking_send(Ok(piece)).is_err() {
                        return Ok(()); // the transfer ended; it reports why
                    }
                }
            };
            if let Err(e) = send(&tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        format!(
            "if [ -d {to} ]; then d={to}/{name}; else d={to}; \
             mkdir -p \"$(dirname \"$d\")\" || exit 1; fi; \
             cat > \"$d\" && chmod {mode:o} \"$d\""
        )
    };
    let mut process = transport.spawn(&Command::new(script).bulk()).await?;
    let outcome = feed(process.as_mut(), rx, local).await;
    finish(process, outcome, &format!("upload to {remote}")).await
}

/// Copies `remote` (a file or a directory tree) from the transport's site to `local`.
pub(crate) async fn download(
    transport: &dyn Transport,
    remote: &str,
    local: &Path,
) -> Result<(), ErrorKind> {
    let from = remote_word(remote);
    let script = format!(
        "if [ -d {from} ]; then exec tar -c -f - -C {from} .; \
         else cd \"$(dirname {from})\" && exec tar -c -f - -- \"$(basename {from})\"; fi"
    );
    let (tx, rx) = mpsc::channel::<Vec<u8>>(PIECES);
    let to = local.to_owned();
    let unpacking = tokio::task::spawn_blocking(move || unpack(ChannelReader::new(rx), &to));
    let mut process = transport.spawn(&Command::new(script).bulk()).await?;
    let outcome = drain(process.as_mut(), tx).await;
    finish(process, outcome, &format!("download of {remote}")).await?;
    unpacking
        .await
        .map_err(|e| ErrorKind::Io(std::io::Error::other(format!("unpacking thread: {e}"))))?
}

/// What the remote command did: its exit and what it said on stderr.
struct Outcome {
    result: Result<crate::ExitStatus, ErrorKind>,
    stderr: Vec<u8>,
}

/// What one event of the transfer's command means: output for the transfer, nothing to
/// act on (stderr is kept for the error message), or the end.
enum Seen {
    Stdout(Vec<u8>),
    Nothing,
    End(Outcome),
}

fn see(event: ProcEvent, stderr: &mut Vec<u8>) -> Seen {
    match event {
        ProcEvent::Output(Stream::Stdout, chunk) => Seen::Stdout(chunk),
        ProcEvent::Output(Stream::Stderr, chunk) => {
            let room = STDERR_KEPT.saturating_sub(stderr.len());
            stderr.extend_from_slice(&chunk[..chunk.len().min(room)]);
            Seen::Nothing
        }
        ProcEvent::Exit(status) => Seen::End(Outcome {
            result: Ok(status),
            stderr: std::mem::take(stderr),
        }),
        ProcEvent::Failed(kind) => Seen::End(Outcome {
            result: Err(kind),
            stderr: std::mem::take(stderr),
        }),
    }
}

/// Writes every piece from `source` to the command's stdin while reading its output.
async fn feed(
    process: &mut dyn Process,
    mut source: mpsc::Receiver<Piece>,
    local: &Path,
) -> Outcome {
    let mut stderr = Vec::new();
    let mut writer = process.split_stdin();
    let mut piece: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut input_done = false;
    loop {
        if !input_done && at >= piece.len() {
            match source.recv().await {
                Some(Ok(next)) => {
                    piece = next;
                    at = 0;
                }
                Some(Err(e)) => {
                    return Outcome {
                        result: Err(err(local, e)),
                        stderr,
                    };
                }
                None => {
                    input_done = true;
                    match writer.as_mut() {
                        Some(w) => w.close().await,
                        None => process.close_stdin().await,
                    }
                }
            }
            continue;
        }
        let Some(w) = writer.as_mut().filter(|_| !input_done) else {
            if !input_done {
                // A transport without a separate writer: write the piece, then read.
                if process.write_stdin(&piece[at..]).await.is_err() {
                    input_done = true;
                }
                at = piece.len();
                continue;
            }
            if let Seen::End(outcome) = see(process.next().await, &mut stderr) {
                return outcome;
            }
            continue;
        };
        tokio::select! {
            written = w.write(&piece[at..]) => match written {
                Ok(n) if n > 0 => at += n,
                // The command stopped reading: its exit status says why.
                _ => {
                    input_done = true;
                    w.close().await;
                }
            },
            event = process.next() => {
                if let Seen::End(outcome) = see(event, &mut stderr) {
                    return outcome;
                }
            }
        }
    }
}

/// Sends the command's stdout to `sink` until the command ends.
async fn drain(process: &mut dyn Process, sink: mpsc::Sender<Vec<u8>>) -> Outcome {
    let mut stderr = Vec::new();
    process.close_stdin().await;
    loop {
        match see(process.next().await, &mut stderr) {
            // The unpacking side stopped (an error it reports itself): keep draining.
            Seen::Stdout(chunk) => drop(sink.send(chunk).await),
            Seen::Nothing => {}
            Seen::End(outcome) => return outcome,
        }
    }
}

/// Turns the command's outcome into the transfer's: a non-zero exit is an error quoting
/// what the command said. A command that did not end is terminated.
async fn finish(
    mut process: Box<dyn Process>,
    outcome: Outcome,
    what: &str,
) -> Result<(), ErrorKind> {
    let said = String::from_utf8_lossy(&outcome.stderr).trim().to_owned();
    match outcome.result {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(ErrorKind::RemoteTransfer {
            what: what.to_owned(),
            status,
            stderr: said,
        }),
        Err(kind) => {
            process.terminate().await;
            Err(kind)
        }
    }
}

/// A piece of what is sent, or why reading it locally failed.
type Piece = Result<Vec<u8>, std::io::Error>;

/// A `Write` for the tar thread whose pieces go to the async side.
struct ChannelWriter {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Piece>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        let _ = self.tx.blocking_send(Err(e));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "transfer ended"))
    }
}

/// A `Read` for the unpacking thread over the pieces the command printed.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader {
            rx,
            piece: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.piece.len() {
            match self.rx.blocking_recv() {
                Some(piece) => {
                    self.piece = piece;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.piece.len() - self.at);
        out[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Unpacks the download's archive by the transfer rule. An archive of a directory starts
/// with its `.` entry; anything else is one file.
fn unpack(reader: impl Read, to: &Path) -> Result<(), ErrorKind> {
    let mut archive = tar::Archive::new(reader);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(|e| err(to, e))?;
    // Directory modes are set last, deepest first: a read-only directory must not stop
    // its own contents from landing.
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    let mut first = true;
    for entry in entries {
        let mut entry = entry.map_err(|e| err(to, e))?;
        let path = entry.path().map_err(|e| err(to, e))?.into_owned();
        let mode = entry.header().mode().map_err(|e| err(to, e))? & 0o7777;
        let is_dir = entry.header().entry_type().is_dir();
        let parts: Vec<Component> = path.components().collect();
        if parts
            .iter()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refused(&path, "unsafe path in the archive"));
        }
        if first {
            first = false;
            let tree = is_dir && parts.iter().all(|c| matches!(c, Component::CurDir));
            if !tree {
                let dest = if to.is_dir() {
                    to.join(&path)
                } else {
                    to.to_owned()
                };
                if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
                }
                return write_entry(&mut entry, &dest, mode);
            }
            std::fs::create_dir_all(to).map_err(|e| err(to, e))?;
            dirs.push((to.to_owned(), mode & 0o777));
            continue;
        }
        if is_dir {
            // Not through a link the archive itself planted: a hostile site could otherwise
            // create or chmod directories outside `to`. (`unpack_in` checks files alike.)
            let dest = no_link_on_the_way(to, &path)?;
            std::fs::create_dir_all(&dest).map_err(|e| err(&dest, e))?;
            dirs.push((dest, mode & 0o777));
        } else if entry.header().entry_type().is_file() {
            let dest = no_link_on_the_way(to, &path)?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
            }
            write_entry(&mut entry, &dest, mode)?;
        } else {
            entry.unpack_in(to).map_err(|e| err(&to.join(&path), e))?;
        }
    }
    if first {
        return Err(refused(to, "the site sent an empty archive"));
    }
    for (dir, mode) in dirs.into_iter().rev() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| err(&dir, e))?;
    }
    Ok(())
}

/// Writes a file entry to `dest` (replacing what is there) through a large buffer, then
/// gives it `mode` without set-uid/set-gid bits; other entry types go through `tar`.
fn write_entry(entry: &mut impl Read, dest: &Path, mode: u32) -> Result<(), ErrorKind> {
    if std::fs::symlink_metadata(dest).is_ok_and(|m| !m.is_dir()) {
        // A new file, not a write through whatever (perhaps a link) was there.
        std::fs::remove_file(dest).map_err(|e| err(dest, e))?;
    }
    let file = std::fs::File::create(dest).map_err(|e| err(dest, e))?;
    let mut out = std::io::BufWriter::with_capacity(PIECE * 4, file);
    let mut buf = vec![0u8; PIECE * 4];
    loop {
        let n = entry.read(&mut buf).map_err(|e| err(dest, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| err(dest, e))?;
    }
    out.flush().map_err(|e| err(dest, e))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| err(dest, e))
}

/// `to/rel`, after checking that no part of it below `to` is a symbolic link.
fn no_link_on_the_way(to: &Path, rel: &Path) -> Result<PathBuf, ErrorKind> {
    let mut at = to.to_owned();
    for part in rel.components() {
        if let Component::Normal(name) = part {
            at.push(name);
            if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(refused(&at, "the archive reaches through a symbolic link"));
            }
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_cannot_reach_through_its_own_links() {
        let scratch = tempfile::tempdir().unwrap();
        let outside = scratch.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        archive
            .append_data(&mut dir.clone(), "./", std::io::empty())
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        archive.append_link(&mut link, "./x", &outside).unwrap();
        dir.set_mode(0o777);
        archive
            .append_data(&mut dir, "./x/made", std::io::empty())
            .unwrap();
        let bytes = archive.into_inner().unwrap();
        let to = scratch.path().join("to");
        let result = unpack(&bytes[..], &to);
        assert!(
            matches!(&result, Err(ErrorKind::TransferRefused { reason, .. }) if reason.contains("symbolic link")),
            "{result:?}"
        );
        assert!(!outside.join("made").exists());
    }

    #[test]
    fn remote_words_keep_home_and_never_start_with_a_dash() {
        assert_eq!(remote_word("~"), "\"$HOME\"");
        assert_eq!(remote_word("~/a b"), "\"$HOME\"/'a b'");
        assert_eq!(remote_word("-x"), "./-x");
        assert_eq!(remote_word("/srv/app"), "/srv/app");
    }
}
