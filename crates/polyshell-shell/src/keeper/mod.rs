//! Connections that outlive one invocation: a per-user keeper process holds SSH connections
//! (authenticated, host key checked) after a run, and the next run's shells use them with no
//! handshake. (Cargo feature `ssh`.)
//!
//! libssh2 sessions cannot move between processes, so the keeper does not hand connections
//! out: it runs its clients' commands on them. A [`Keeper`] is a client's line to it, and
//! [`Shell::with_ssh_kept`](crate::Shell::with_ssh_kept) a shell whose commands go through
//! it; to the rest of the program that shell is like any other (output, input, exit status,
//! timeout and termination behave exactly as on a direct connection).
//!
//! [`Shell::run`](crate::Shell::run) of a command with no input, no terminal and nothing
//! in its script that may outlive it (no lone `&`, `nohup`, `setsid`, `disown`) runs in a
//! subshell of one resident `/bin/sh` per kept connection rather than a session of its own
//! (a fork on the site instead of sshd's session, the login shell and `sh`). There `$$` is
//! that shell, which a cancellation ends with the command, and a command killed by a signal
//! reports exit code 128 + N, as `sh` does; everything else is as on its own session.
//!
//! The keeper is this same program started again with `POLYSHELL_KEEPER_SERVE` set: a
//! program that keeps connections calls [`serve_if_asked`] first thing in `main` (the
//! `polyshell` binary does).
//!
//! ```no_run
//! # async fn demo() -> Result<(), polyshell_shell::ShellError> {
//! use polyshell_shell::keeper::Keeper;
//! use polyshell_shell::{Shell, SshOptions};
//! use std::time::Duration;
//!
//! // In main, before anything else: polyshell_shell::keeper::serve_if_asked();
//! let keeper = Keeper::connect(Duration::from_secs(600))
//!     .await
//!     .map_err(|kind| polyshell_shell::ShellError::new("keeper", kind))?;
//! let shell = Shell::with_ssh_kept(SshOptions::new("web01"), &keeper);
//! shell.run("uptime").await?; // the first run connects; the next ones, within 10 minutes, do not
//! # Ok(())
//! # }
//! ```
//!
//! Security: the socket is in a directory only the user can enter (`$XDG_RUNTIME_DIR/polyshell`,
//! else `/tmp/polyshell-UID`, created 0700 and refused when it is anyone else's or open to
//! others), and the keeper checks every client's uid (`SO_PEERCRED`). It never asks for a
//! passphrase (a site whose key needs one typed is connected by its client directly, not
//! kept) and holds no sudo password: input passes through it to the command, unstored.

mod server;
mod wire;

pub use wire::KeptInfo;

use crate::error::ErrorKind;
use crate::process::{ProcEvent, Process, StdinWriter};
use crate::ssh::{runtime, SshOptions, SshTransport};
use crate::{Command, HostKeyPolicy, Transport};
use async_trait::async_trait;
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use wire::{Ask, Tell, WireOptions};

/// The environment variable that makes [`serve_if_asked`] run the keeper (its value: the
/// socket's directory).
pub const SERVE_ENV: &str = "POLYSHELL_KEEPER_SERVE";
/// Overrides the directory of the keeper's socket.
pub const DIR_ENV: &str = "POLYSHELL_KEEPER_DIR";
const SOCKET: &str = "keeper.sock";
const LOCK: &str = "keeper.lock";
/// The variables a keeper is started with (the rest of its client's environment is not
/// passed): what resolving ssh_config and running needs.
const KEEPER_ENV: &[&str] = &[
    "HOME",
    "USER",
    "LOGNAME",
    "PATH",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
];
/// Input a client may have in flight to one channel before the keeper says it was written.
const STDIN_CREDIT: usize = 1024 * 1024;
/// How long a starting keeper is waited for.
const START_WAIT: Duration = Duration::from_secs(5);

/// When this process was started as the keeper (`POLYSHELL_KEEPER_SERVE` set), runs it and
/// exits; otherwise returns at once. Call it first thing in `main`, before any runtime starts.
pub fn serve_if_asked() {
    let Some(dir) = std::env::var_os(SERVE_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let code = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => match rt.block_on(server::serve(&dir)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("polyshell keeper: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("polyshell keeper: cannot start a runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The directory of this user's keeper socket: `$POLYSHELL_KEEPER_DIR`, else
/// `$XDG_RUNTIME_DIR/polyshell`, else `/tmp/polyshell-UID`.
pub fn socket_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&run).join("polyshell");
    }
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("polyshell-{uid}"))
}

/// Makes `dir` (0700) if missing; refuses one that is another user's or open to others.
fn check_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not to this user ({uid}): not used",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is open to other users (mode {:o}): not used; make it 0700",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// The keeper's lock, held while it runs: `None` when another keeper holds it.
fn lock_file(dir: &Path) -> Result<Option<std::fs::File>, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on an fd we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(locked.then_some(file))
}

/// What a channel's reader hears.
enum ChanEvent {
    Proc(ProcEvent),
    Terminated,
}

struct ChanSlot {
    events: mpsc::UnboundedSender<ChanEvent>,
    credit: Arc<Semaphore>,
    /// A dropped process's termination, awaited by `flush_terminations`.
    on_terminated: Option<oneshot::Sender<()>>,
}

type ConnectReply = Result<String, (ErrorKind, bool)>;

#[derive(Default)]
struct Pending {
    chans: HashMap<u64, ChanSlot>,
    connects: HashMap<u64, oneshot::Sender<ConnectReply>>,
    /// Replies to `List` and `Close`, in the order asked.
    replies: std::collections::VecDeque<oneshot::Sender<Tell>>,
    /// Why the line to the keeper ended.
    gone: Option<String>,
}

/// This process's line to the user's keeper; shells made with
/// [`Shell::with_ssh_kept`](crate::Shell::with_ssh_kept) share it.
pub struct Keeper {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
    next: AtomicU64,
    persist: Duration,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("persist", &self.persist)
            .finish_non_exhaustive()
    }
}

impl Keeper {
    /// The user's keeper, started (as this program, see [`serve_if_asked`]) when none runs;
    /// connections made through it stay open `persist` after their last use.
    pub async fn connect(persist: Duration) -> Result<Arc<Keeper>, ErrorKind> {
        let program = std::env::current_exe()
            .map_err(|e| ErrorKind::Keeper(format!("cannot find this program to start: {e}")))?;
        Keeper::connect_with(&socket_dir(), &program, persist).await
    }

    /// As [`connect`](Keeper::connect), with the keeper's socket in `dir` (made 0700 if
    /// missing), starting `program` (which calls [`serve_if_asked`]) when no keeper runs.
    pub async fn connect_with(
        dir: &Path,
        program: &Path,
        persist: Duration,
    ) -> Result<Arc<Keeper>, ErrorKind> {
        let dir = dir.to_owned();
        check_dir(&dir).map_err(ErrorKind::Keeper)?;
        if let Ok(keeper) = Keeper::attach(&dir, persist).await {
            return Ok(keeper);
        }
        let mut start = std::process::Command::new(program);
        // A small environment, named: nothing secret a client's environment may hold
        // (a sudo password variable, tokens) goes with it into a long-lived process.
        start.env_clear();
        for name in KEEPER_ENV {
            if let Some(value) = std::env::var_os(name) {
                start.env(name, value);
            }
        }
        start
            .env(SERVE_ENV, &dir)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe; the keeper leaves the terminal's session, so
        // the terminal's Ctrl-C and hangup do not reach it.
        unsafe {
            use std::os::unix::process::CommandExt;
            start.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = start
            .spawn()
            .map_err(|e| ErrorKind::Keeper(format!("cannot start {}: {e}", program.display())))?;
        // Reap it when it exits early (another keeper won the race): no zombie left.
        std::thread::spawn(move || child.wait());
        let deadline = std::time::Instant::now() + START_WAIT;
        loop {
            match Keeper::attach(&dir, persist).await {
                Ok(keeper) => return Ok(keeper),
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(ErrorKind::Keeper(format!(
                        "started, but no answer on {} within {}s: {e}",
                        dir.join(SOCKET).display(),
                        START_WAIT.as_secs()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The user's keeper if one runs (none is started).
    pub async fn running() -> Result<Option<Arc<Keeper>>, ErrorKind> {
        Keeper::running_in(&socket_dir()).await
    }

    /// The keeper whose socket is in `dir`, if one runs.
    pub async fn running_in(dir: &Path) -> Result<Option<Arc<Keeper>>, ErrorKind> {
        if !dir.join(SOCKET).exists() {
            return Ok(None);
        }
        check_dir(dir).map_err(ErrorKind::Keeper)?;
        match Keeper::attach(dir, Duration::ZERO).await {
            Ok(keeper) => Ok(Some(keeper)),
            Err(AttachError::Absent) => Ok(None),
            Err(AttachError::Failed(e)) => Err(ErrorKind::Keeper(e)),
        }
    }

    /// Connects to the keeper on `dir`'s socket: on the SSH runtime, which drives the line's
    /// reader and writer whatever runtime (if any still) the caller has.
    async fn attach(dir: &Path, persist: Duration) -> Result<Arc<Keeper>, AttachError> {
        let path = dir.join(SOCKET);
        runtime()
            .spawn(Keeper::attach_here(path, persist))
            .await
            .map_err(|e| AttachError::Failed(format!("keeper line task: {e}")))?
    }

    async fn attach_here(path: PathBuf, persist: Duration) -> Result<Arc<Keeper>, AttachError> {
        let mut stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(AttachError::Absent)
            }
            Err(e) => return Err(AttachError::Failed(format!("{}: {e}", path.display()))),
        };
        let hello = Ask::Hello {
            version: wire::VERSION,
        };
        let failed = |e: std::io::Error| AttachError::Failed(format!("{}: {e}", path.display()));
        wire::write(&mut stream, &hello).await.map_err(failed)?;
        match wire::read::<Tell>(&mut stream).await.map_err(failed)? {
            Some(Tell::Hello { version }) if version == wire::VERSION => {}
            Some(Tell::Hello { version }) => {
                return Err(AttachError::Failed(format!(
                    "the keeper on {} speaks version {version}, this program {} (close it: polyshell connections close)",
                    path.display(),
                    wire::VERSION
                )))
            }
            Some(Tell::Refused { reason }) => {
                return Err(AttachError::Failed(format!(
                    "the keeper on {} refused this client: {reason}",
                    path.display()
                )))
            }
            // A keeper on its way out closes without a word: as if there were none.
            _ => return Err(AttachError::Absent),
        }
        let (reader, writer) = stream.into_split();
        let (out, frames) = mpsc::unbounded_channel();
        let pending: Arc<Mutex<Pending>> = Arc::default();
        tokio::spawn(write_frames(writer, frames));
        tokio::spawn(read_tells(reader, pending.clone()));
        Ok(Arc::new(Keeper {
            out,
            pending,
            next: AtomicU64::new(1),
            persist,
        }))
    }

    fn send(&self, ask: &Ask) -> Result<(), ErrorKind> {
        let frame = wire::frame(ask).map_err(|e| ErrorKind::Keeper(e.to_string()))?;
        self.out.send(frame).map_err(|_| self.gone())
    }

    fn gone(&self) -> ErrorKind {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        ErrorKind::Keeper(
            pending
                .gone
                .clone()
                .unwrap_or_else(|| "the keeper went away".into()),
        )
    }

    async fn ask(&self, ask: Ask) -> Result<Tell, ErrorKind> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replies
            .push_back(tx);
        self.send(&ask)?;
        rx.await.map_err(|_| self.gone())
    }

    /// The connections kept now.
    pub async fn list(&self) -> Result<Vec<KeptInfo>, ErrorKind> {
        match self.ask(Ask::List).await? {
            Tell::Listing(list) => Ok(list),
            other => Err(ErrorKind::Keeper(format!("unexpected answer {other:?}"))),
        }
    }

    /// Closes the kept connections whose site or host name matches one of `patterns` (`*`
    /// and `?` wildcards; all of them when empty); one in use closes when its run releases
    /// it. How many.
    pub async fn close(&self, patterns: &[String]) -> Result<u64, ErrorKind> {
        match self
            .ask(Ask::Close {
                patterns: patterns.to_vec(),
            })
            .await?
        {
            Tell::Closed { count } => Ok(count),
            other => Err(ErrorKind::Keeper(format!("unexpected answer {other:?}"))),
        }
    }
}

enum AttachError {
    /// No keeper listens.
    Absent,
    Failed(String),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Absent => f.write_str("no keeper listens"),
            AttachError::Failed(e) => f.write_str(e),
        }
    }
}

async fn write_frames(
    mut writer: tokio::net::unix::OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    use tokio::io::AsyncWriteExt;
    while let Some(frame) = frames.recv().await {
        if writer.write_all(&frame).await.is_err() {
            break;
        }
    }
}

/// Hands each of the keeper's messages to whoever waits for it; when the keeper goes away,
/// everything waiting fails.
async fn read_tells(reader: tokio::net::unix::OwnedReadHalf, pending: Arc<Mutex<Pending>>) {
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
    let why = loop {
        let tell = match wire::read::<Tell>(&mut reader).await {
            Ok(Some(tell)) => tell,
            Ok(None) => break "the keeper closed the connection".to_owned(),
            Err(e) => break format!("reading from the keeper: {e}"),
        };
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        match tell {
            Tell::Connected { conn, marker } => {
                if let Some(tx) = p.connects.remove(&conn) {
                    let _ = tx.send(Ok(marker));
                }
            }
            Tell::ConnectFailed {
                conn,
                error,
                needs_prompt,
            } => {
                if let Some(tx) = p.connects.remove(&conn) {
                    let _ = tx.send(Err((error.into(), needs_prompt)));
                }
            }
            Tell::Output { chan, stderr, data } => {
                let stream = if stderr {
                    crate::Stream::Stderr
                } else {
                    crate::Stream::Stdout
                };
                if let Some(slot) = p.chans.get(&chan) {
                    let _ = slot
                        .events
                        .send(ChanEvent::Proc(ProcEvent::Output(stream, data)));
                }
            }
            Tell::Exit { chan, status } => {
                if let Some(slot) = p.chans.remove(&chan) {
                    let _ = slot
                        .events
                        .send(ChanEvent::Proc(ProcEvent::Exit(status.into())));
                    slot.credit.close();
                }
            }
            Tell::Failed { chan, error } => {
                if let Some(slot) = p.chans.remove(&chan) {
                    let _ = slot
                        .events
                        .send(ChanEvent::Proc(ProcEvent::Failed(error.into())));
                    slot.credit.close();
                }
            }
            Tell::Credit { chan, bytes } => {
                if let Some(slot) = p.chans.get(&chan) {
                    slot.credit.add_permits(bytes as usize);
                }
            }
            Tell::Terminated { chan } => {
                if let Some(mut slot) = p.chans.remove(&chan) {
                    let _ = slot.events.send(ChanEvent::Terminated);
                    if let Some(done) = slot.on_terminated.take() {
                        let _ = done.send(());
                    }
                    slot.credit.close();
                }
            }
            reply @ (Tell::Listing(_) | Tell::Closed { .. }) => {
                if let Some(tx) = p.replies.pop_front() {
                    let _ = tx.send(reply);
                }
            }
            Tell::Hello { .. } | Tell::Refused { .. } => {}
        }
    };
    let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
    tracing::debug!("keeper line ended: {why}");
    p.gone = Some(why.clone());
    for (_, mut slot) in p.chans.drain() {
        let _ = slot
            .events
            .send(ChanEvent::Proc(ProcEvent::Failed(ErrorKind::Keeper(
                why.clone(),
            ))));
        if let Some(done) = slot.on_terminated.take() {
            let _ = done.send(());
        }
        slot.credit.close();
    }
    for (_, tx) in p.connects.drain() {
        let _ = tx.send(Err((ErrorKind::Keeper(why.clone()), false)));
    }
    p.replies.clear();
}

/// A site's shell through the keeper.
pub(crate) struct KeptTransport {
    keeper: Arc<Keeper>,
    opts: SshOptions,
    /// The keeper's connection number and pid marker, once connected.
    state: tokio::sync::Mutex<Option<(u64, String)>>,
    /// The site needs a passphrase typed: this process connects it itself.
    direct: std::sync::OnceLock<SshTransport>,
}

impl KeptTransport {
    pub(crate) fn new(opts: SshOptions, keeper: Arc<Keeper>) -> KeptTransport {
        KeptTransport {
            keeper,
            opts,
            state: tokio::sync::Mutex::new(None),
            direct: std::sync::OnceLock::new(),
        }
    }

    fn wire_options(&self) -> WireOptions {
        let absolute = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        };
        let o = &self.opts;
        WireOptions {
            host: o.host.clone(),
            user: o.user.clone(),
            port: o.port,
            identity: absolute(&o.identity),
            ssh_config: absolute(&o.ssh_config),
            known_hosts: absolute(&o.known_hosts),
            policy: o.host_key_policy.map(|p| match p {
                HostKeyPolicy::Strict => 0,
                HostKeyPolicy::AcceptNew => 1,
                HostKeyPolicy::Off => 2,
            }),
            connect_timeout_ms: o.connect_timeout.map(|d| d.as_millis() as u64),
            keepalive_ms: o.keepalive.map(|d| d.as_millis() as u64),
            proxy_jump: o.proxy_jump.clone(),
            agent_socket: std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        }
    }

    /// The keeper's connection (number, pid marker), asked for when this shell has none;
    /// `None` when the site is connected directly instead.
    async fn connection(&self) -> Result<Option<(u64, String)>, ErrorKind> {
        if self.direct.get().is_some() {
            return Ok(None);
        }
        let mut state = self.state.lock().await;
        if let Some(s) = state.as_ref() {
            return Ok(Some(s.clone()));
        }
        let conn = self.keeper.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.keeper
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connects
            .insert(conn, tx);
        self.keeper.send(&Ask::Connect {
            conn,
            options: self.wire_options(),
            persist_ms: self.keeper.persist.as_millis() as u64,
        })?;
        match rx.await.map_err(|_| self.keeper.gone())? {
            Ok(marker) => {
                *state = Some((conn, marker.clone()));
                Ok(Some((conn, marker)))
            }
            Err((_, true)) => {
                // A key that needs its passphrase typed: asked here, connected here.
                tracing::debug!(site = %self.opts.host, "connecting directly: the key needs a passphrase");
                let _ = self.direct.set(SshTransport::new(self.opts.clone()));
                Ok(None)
            }
            Err((kind, false)) => Err(kind),
        }
    }
}

#[async_trait]
impl Transport for KeptTransport {
    async fn spawn(&self, command: &Command) -> Result<Box<dyn Process>, ErrorKind> {
        let Some((conn, marker)) = self.connection().await? else {
            let direct = self.direct.get().expect("set when no keeper connection");
            return direct.spawn(command).await;
        };
        let script = crate::command::login_shell_line(&command.remote_script(Some(&marker)));
        let chan = self.keeper.next.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(STDIN_CREDIT));
        self.keeper
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chans
            .insert(
                chan,
                ChanSlot {
                    events,
                    credit: credit.clone(),
                    on_terminated: None,
                },
            );
        let plain = crate::ssh::runner::plain_script(command);
        if let Err(e) = self.keeper.send(&Ask::Open {
            conn,
            chan,
            script,
            pty: command.pty,
            bulk: command.bulk,
            plain,
        }) {
            let mut pending = self
                .keeper
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            pending.chans.remove(&chan);
            return Err(e);
        }
        Ok(Box::new(KeptProcess {
            keeper: self.keeper.clone(),
            chan,
            events: rx,
            credit,
            finished: false,
        }))
    }

    async fn connect(&self) -> Result<(), ErrorKind> {
        match self.connection().await? {
            Some(_) => Ok(()),
            None => match self.direct.get() {
                Some(direct) => direct.connect().await,
                None => Ok(()),
            },
        }
    }

    async fn upload(&self, local: &Path, remote: &str) -> Result<(), ErrorKind> {
        crate::stream_transfer::upload(self, local, remote).await
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<(), ErrorKind> {
        crate::stream_transfer::download(self, remote, local).await
    }

    fn describe(&self) -> String {
        format!("ssh {} (kept)", self.opts.host)
    }

    async fn disconnect(&self) {
        if let Some(direct) = self.direct.get() {
            return direct.disconnect().await;
        }
        if let Some((conn, _)) = self.state.lock().await.take() {
            let _ = self.keeper.send(&Ask::Release { conn });
        }
    }
}

/// A command running through the keeper.
struct KeptProcess {
    keeper: Arc<Keeper>,
    chan: u64,
    events: mpsc::UnboundedReceiver<ChanEvent>,
    credit: Arc<Semaphore>,
    finished: bool,
}

#[async_trait]
impl Process for KeptProcess {
    async fn next(&mut self) -> ProcEvent {
        loop {
            match self.events.recv().await {
                Some(ChanEvent::Proc(event)) => {
                    match &event {
                        ProcEvent::Output(_, data) => {
                            let _ = self.keeper.send(&Ask::Consumed {
                                chan: self.chan,
                                bytes: data.len() as u64,
                            });
                        }
                        ProcEvent::Exit(_) | ProcEvent::Failed(_) => self.finished = true,
                    }
                    return event;
                }
                Some(ChanEvent::Terminated) => continue,
                None => {
                    self.finished = true;
                    return ProcEvent::Failed(self.keeper.gone());
                }
            }
        }
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ErrorKind> {
        let mut writer = KeptStdin {
            keeper: self.keeper.clone(),
            chan: self.chan,
            credit: self.credit.clone(),
        };
        let mut at = 0;
        while at < data.len() {
            at += writer.write(&data[at..]).await?;
        }
        Ok(())
    }

    async fn close_stdin(&mut self) {
        let _ = self.keeper.send(&Ask::Eof { chan: self.chan });
    }

    fn split_stdin(&mut self) -> Option<Box<dyn StdinWriter>> {
        Some(Box::new(KeptStdin {
            keeper: self.keeper.clone(),
            chan: self.chan,
            credit: self.credit.clone(),
        }))
    }

    async fn terminate(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self
            .keeper
            .send(&Ask::Terminate { chan: self.chan })
            .is_err()
        {
            return;
        }
        let wait = async {
            while let Some(event) = self.events.recv().await {
                if matches!(
                    event,
                    ChanEvent::Terminated
                        | ChanEvent::Proc(ProcEvent::Exit(_) | ProcEvent::Failed(_))
                ) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}

impl Drop for KeptProcess {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (done, wait) = oneshot::channel();
        {
            let mut p = self
                .keeper
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match p.chans.get_mut(&self.chan) {
                Some(slot) => slot.on_terminated = Some(done),
                None => return, // it ended meanwhile
            }
        }
        if self
            .keeper
            .send(&Ask::Terminate { chan: self.chan })
            .is_ok()
        {
            crate::terminations::register(wait);
        }
    }
}

/// A kept channel's input: sent as the keeper's credit allows.
struct KeptStdin {
    keeper: Arc<Keeper>,
    chan: u64,
    credit: Arc<Semaphore>,
}

#[async_trait]
impl StdinWriter for KeptStdin {
    async fn write(&mut self, data: &[u8]) -> Result<usize, ErrorKind> {
        let n = crate::process::take_credit(&self.credit, data).await?;
        if n == 0 {
            return Ok(0);
        }
        self.keeper
            .send(&Ask::Stdin {
                chan: self.chan,
                data: data[..n].to_vec(),
            })
            .map_err(|_| ErrorKind::StdinClosed)?;
        Ok(n)
    }

    async fn close(&mut self) {
        let _ = self.keeper.send(&Ask::Eof { chan: self.chan });
    }
}
