//! The SSH transport: libssh2 (through `ssh2`) in non-blocking mode, driven by tokio on a
//! small runtime of its own (`polyshell-ssh` threads, one per core), one connection per
//! shell reused for every command, concurrent commands multiplexed on it.

mod auth;
mod cache;
mod connect;
mod connection;
mod driver;
mod gate;
mod keys;
mod known_hosts;
mod nonblocking;
pub(crate) mod runner;
mod target;

pub use auth::KeyPassphrases;
pub(crate) use connect::pid_marker;
pub(crate) use target::{resolve, AgentChoice};
pub use target::{HostKeyPolicy, SshOptions};

use crate::error::ErrorKind;
use crate::process::{ProcEvent, Process, StdinWriter};
use crate::{Command, Transport};
use async_trait::async_trait;
use connection::{Connection, OpenKind, Request};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Events a channel may queue for its reader before the driver stops reading it (the SSH
/// window then fills and the remote side waits): bounded memory for any output size.
const EVENT_QUEUE: usize = 8;
/// The same for a bulk stream (a transfer), where a deeper queue keeps the data moving: one
/// such stream per site at a time, so the bound stays small for the run.
const BULK_EVENT_QUEUE: usize = 32;

/// The runtime that drives every SSH connection of this process. Callers may use any
/// runtime (even a current-thread one): they talk to connections through channels.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        raise_fd_limit();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("polyshell-ssh")
            .enable_all()
            .build()
            .expect("cannot start the polyshell-ssh runtime")
    })
}

/// Each connection holds a socket (and a forwarded site two): raise the soft file limit to
/// the hard one, once, so a thousand sites do not hit EMFILE at the default 1024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Connects through every bastion in turn, then to the target. Bastions are shared: every
/// site behind the same chain uses one connection per bastion (see [`shared_bastion`]).
async fn open(opts: SshOptions, agent: Option<AgentChoice>) -> Result<Connection, ErrorKind> {
    let with_agent = |mut target: target::Target| {
        if let (Some(agent), AgentChoice::Env) = (&agent, &target.agent) {
            target.agent = agent.clone();
        }
        target
    };
    let target = with_agent(target::resolve(&opts)?);
    let jumps = target
        .jumps
        .iter()
        .map(|spec| {
            Ok(with_agent(target::resolve(&target::jump_options(
                spec, &opts,
            ))?))
        })
        .collect::<Result<Vec<_>, ErrorKind>>()?;
    // The bastion's connection is chosen once this site may start its handshake, when the
    // queues of channel opens on the bastion's connections tell which is least busy.
    gate::handshakes()
        .run(|| async {
            let mut via: Option<Connection> = None;
            let mut chain = String::new();
            for jump in &jumps {
                // Everything that makes two bastion connections different goes into the key.
                chain.push_str(&format!("{jump:?}\n"));
                via = Some(shared_bastion(&chain, jump, via.as_ref()).await?);
            }
            connect::connect(&target, via.as_ref()).await
        })
        .await
}

/// A bastion's connections as the process-wide table keeps them: weakly while they work
/// (the sites' forwarded channels keep them open, and each closes when its last is done),
/// or the reason the bastion failed, so that 500 sites behind a dead bastion fail once, not
/// 500 times.
enum BastionSlot {
    Empty,
    Up {
        pool: Vec<Pooled>,
        /// Connections being added now, and how many the pool may hold.
        growing: usize,
        most: usize,
    },
    Failed {
        reason: String,
        at: std::time::Instant,
    },
}

struct Pooled {
    weak: connection::WeakConnection,
    /// A connection added by [`grow`] holds itself open until a site takes it.
    fresh: Option<Connection>,
}

/// How long a bastion's failure stands before the next site may try it again.
const BASTION_RETRY: Duration = Duration::from_secs(30);

/// libssh2 opens one channel at a time per connection, a round trip each: where the sites'
/// channel opens would wait longer than this on every connection to a bastion (a bastion
/// across a real network), it gets another connection, up to [`BASTION_MOST`], at most
/// [`BASTION_GROWING`] handshakes at once (OpenSSH's stock `MaxStartups 10:30:100` starts
/// dropping at 10 unauthenticated connections).
const BASTION_WAIT: Duration = Duration::from_secs(1);
const BASTION_MOST: usize = 32;
const BASTION_GROWING: usize = 8;

/// A connection to the bastion reached by `chain`, opened once however many sites sit
/// behind it (OpenSSH's stock `MaxStartups 10:30:100` drops connections well before 200
/// sites open their own); more only where its channel opens queue past [`BASTION_WAIT`].
/// Sites open `direct-tcpip` channels over it, one at a time, as the connection's driver
/// does for every channel.
async fn shared_bastion(
    chain: &str,
    jump: &target::Target,
    via: Option<&Connection>,
) -> Result<Connection, ErrorKind> {
    type Table =
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<BastionSlot>>>>;
    static BASTIONS: OnceLock<Table> = OnceLock::new();
    let shared = BASTIONS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(chain.to_owned())
        .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(BastionSlot::Empty)))
        .clone();
    let asked = std::time::Instant::now();
    loop {
        // Sites behind a bastion being connected wait here for that one connection.
        let mut slot = shared.lock().await;
        let BastionSlot::Up {
            pool,
            growing,
            most,
        } = &mut *slot
        else {
            return first_bastion(&mut slot, jump, via).await;
        };
        let mut live: Vec<(Connection, usize)> = Vec::new();
        pool.retain_mut(|p| {
            let conn = p.fresh.clone().or_else(|| p.weak.upgrade());
            match conn.filter(Connection::is_alive) {
                Some(conn) => {
                    live.push((conn, live.len()));
                    true
                }
                None => false,
            }
        });
        // One open's time on this bastion, as the pool's connections have timed it.
        let open_time = live.iter().filter_map(|(c, _)| c.opens.open_time()).max();
        let waited = asked.elapsed();
        // Until one open has been timed, a queue's length says nothing: wait for that one
        // (a round trip, once per run), then choose.
        if open_time.is_none() && !live.is_empty() && waited < BASTION_WAIT {
            drop(slot);
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let guess = open_time.unwrap_or_default();
        let Some((conn, at)) = live
            .into_iter()
            .min_by_key(|(c, _)| c.opens.expected_wait(guess))
        else {
            return first_bastion(&mut slot, jump, via).await;
        };
        let busy = conn.opens.expected_wait(guess) > BASTION_WAIT;
        if busy && pool.len() + *growing < *most && *growing < BASTION_GROWING {
            *growing += 1;
            tokio::spawn(grow(shared.clone(), jump.clone(), via.cloned()));
        }
        // Every queue long and a connection coming: wait for it rather than join a queue.
        if busy && *growing > 0 && waited < BASTION_WAIT * 10 {
            drop(slot);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        pool[at].fresh = None;
        return Ok(conn);
    }
}

/// The first connection to a bastion (or the next after it failed or closed), made by the
/// site holding the bastion's slot while the others wait.
async fn first_bastion(
    slot: &mut BastionSlot,
    jump: &target::Target,
    via: Option<&Connection>,
) -> Result<Connection, ErrorKind> {
    match &*slot {
        BastionSlot::Failed { reason, at } if at.elapsed() < BASTION_RETRY => {
            return Err(ErrorKind::Bastion {
                bastion: jump.alias.clone(),
                reason: reason.clone(),
            });
        }
        _ => {}
    }
    // Not through the handshake gate: this site holds a slot of it already.
    match connect::connect(jump, via).await {
        Ok(conn) => {
            *slot = BastionSlot::Up {
                pool: vec![Pooled {
                    weak: conn.downgrade(),
                    fresh: None,
                }],
                growing: 0,
                most: BASTION_MOST,
            };
            Ok(conn)
        }
        Err(kind) => {
            let reason = kind.to_string();
            *slot = BastionSlot::Failed {
                reason: reason.clone(),
                at: std::time::Instant::now(),
            };
            Err(ErrorKind::Bastion {
                bastion: jump.alias.clone(),
                reason,
            })
        }
    }
}

/// Adds a connection to a bastion's pool (outside the handshake gate: the sites holding
/// its slots wait for this). One that fails stops the pool growing for the run.
async fn grow(
    shared: Arc<tokio::sync::Mutex<BastionSlot>>,
    jump: target::Target,
    via: Option<Connection>,
) {
    let grown = connect::connect(&jump, via.as_ref()).await;
    let mut slot = shared.lock().await;
    if let BastionSlot::Up {
        pool,
        growing,
        most,
    } = &mut *slot
    {
        *growing -= 1;
        match grown {
            Ok(conn) => {
                tracing::debug!(bastion = %jump.alias, connections = pool.len() + 1, "channel opens queue: another connection to the bastion");
                pool.push(Pooled {
                    weak: conn.downgrade(),
                    fresh: Some(conn),
                });
            }
            Err(e) => {
                tracing::debug!(bastion = %jump.alias, error = %e, "no further connection to the bastion");
                *most = pool.len();
            }
        }
    }
}

/// The libssh2 transport of one site.
pub(crate) struct SshTransport {
    opts: SshOptions,
    /// The ssh-agent to use where the configuration says "the environment's" (the keeper's
    /// environment is not its client's).
    agent: Option<AgentChoice>,
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// The resident shell of the connection's plain commands, once one ran.
    runner: runner::Slot,
}

impl SshTransport {
    pub(crate) fn new(opts: SshOptions) -> SshTransport {
        SshTransport::with_agent(opts, None)
    }

    pub(crate) fn with_agent(opts: SshOptions, agent: Option<AgentChoice>) -> SshTransport {
        SshTransport {
            opts,
            agent,
            conn: tokio::sync::Mutex::new(None),
            runner: Default::default(),
        }
    }

    /// The site's host, as the options name it (for logs).
    pub(crate) fn host(&self) -> &str {
        &self.opts.host
    }

    /// The runner's slot (the connection keeper runs plain commands on it always).
    pub(crate) fn runner(&self) -> &runner::Slot {
        &self.runner
    }

    /// The runner, taken from its slot if it runs nothing now (to close it).
    pub(crate) fn idle_runner(&self) -> Option<runner::Runner> {
        self.runner.try_lock().ok().and_then(|mut slot| slot.take())
    }

    /// Whether `conn` is the connection held now (not one let go by `disconnect`).
    pub(crate) async fn holds(&self, conn: &Connection) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| c.same(conn))
    }

    /// Whether a live connection is held now (without connecting).
    pub(crate) fn is_connected(&self) -> bool {
        self.conn
            .try_lock()
            .map(|c| c.as_ref().is_some_and(Connection::is_alive))
            .unwrap_or(true) // being connected or used right now
    }

    /// Connects now unless a live connection is held.
    pub(crate) async fn open_connection(&self) -> Result<(), ErrorKind> {
        self.connection().await.map(|_| ())
    }

    /// Runs `script` (a whole remote command line) on a channel of the live connection.
    pub(crate) async fn open_script(
        &self,
        script: String,
        pty: bool,
        bulk: bool,
    ) -> Result<SshProcess, ErrorKind> {
        let conn = self.connection().await?;
        let queue = if bulk { BULK_EVENT_QUEUE } else { EVENT_QUEUE };
        SshProcess::open(
            &conn,
            OpenKind::Exec {
                script,
                pty,
                resident: false,
                runner: false,
            },
            queue,
        )
    }

    /// Starts `script` as a command that lives as long as the connection (a runner). Without
    /// `spare`, the connection keeps no spare channel for it (a kept connection that may sit
    /// idle for long); with it, the connection's other commands take the spare as usual.
    pub(crate) async fn open_runner(
        &self,
        script: String,
        spare: bool,
    ) -> Result<SshProcess, ErrorKind> {
        let conn = self.connection().await?;
        SshProcess::open(
            &conn,
            OpenKind::Exec {
                script,
                pty: false,
                resident: !spare,
                runner: true,
            },
            EVENT_QUEUE,
        )
    }

    /// The live connection, connecting (again) when there is none.
    async fn connection(&self) -> Result<Connection, ErrorKind> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let opts = self.opts.clone();
        let fresh = runtime()
            .spawn(open(opts, self.agent.clone()))
            .await
            .map_err(|e| ErrorKind::Io(std::io::Error::other(format!("connection task: {e}"))))??;
        *conn = Some(fresh.clone());
        Ok(fresh)
    }
}

#[async_trait]
impl Transport for SshTransport {
    async fn spawn(&self, command: &Command) -> Result<Box<dyn Process>, ErrorKind> {
        if self.opts.resident_shell {
            // Connected first: a site that cannot be reached is tried once, not again for
            // a channel of its own.
            let conn = self.connection().await?;
            match runner::plain_script(command) {
                Some(plain) => {
                    if let Some(on) =
                        runner::OnRunner::start(&self.runner, self, &plain, true).await
                    {
                        return Ok(Box::new(on));
                    }
                }
                // A server that refused a channel beside the runner (`MaxSessions 1`) has room
                // for this one once an idle runner is closed.
                None if conn.opens.refused() => {
                    if let Some(runner) = self.idle_runner() {
                        runner.close().await;
                    }
                }
                None => {}
            }
        }
        let script = crate::command::login_shell_line(&command.remote_script(Some(&pid_marker())));
        Ok(Box::new(
            self.open_script(script, command.pty, command.bulk).await?,
        ))
    }

    async fn connect(&self) -> Result<(), ErrorKind> {
        self.connection().await.map(|_| ())
    }

    async fn upload(&self, local: &Path, remote: &str) -> Result<(), ErrorKind> {
        crate::stream_transfer::upload(self, local, remote).await
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<(), ErrorKind> {
        crate::stream_transfer::download(self, remote, local).await
    }

    fn describe(&self) -> String {
        format!("ssh {}", self.opts.host)
    }

    async fn disconnect(&self) {
        // The driver ends (and says goodbye) when its last handle is gone: the idle runner
        // holds one (dropped, it is let go with the end of its input).
        drop(self.idle_runner());
        self.conn.lock().await.take();
    }
}

/// A command (or forwarded port) on a connection.
pub(crate) struct SshProcess {
    conn: Connection,
    id: u64,
    events: mpsc::Receiver<ProcEvent>,
    full: Arc<AtomicBool>,
    credit: Arc<Semaphore>,
    finished: bool,
}

impl SshProcess {
    fn open(conn: &Connection, kind: OpenKind, queue: usize) -> Result<SshProcess, ErrorKind> {
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(queue);
        let full = Arc::new(AtomicBool::new(false));
        let credit = connect::new_credit();
        conn.opens.asked();
        conn.tx
            .send(Request::Open {
                id,
                kind,
                events: tx,
                full: full.clone(),
                credit: credit.clone(),
            })
            .map_err(|_| ErrorKind::ConnectionLost {
                host: conn.host.to_string(),
                reason: "the connection is closed".into(),
            })?;
        Ok(SshProcess {
            conn: conn.clone(),
            id,
            events: rx,
            full,
            credit,
            finished: false,
        })
    }

    /// The connection the command runs on.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Ends the command's input and forgets it: its drop then terminates nothing (a runner
    /// with nothing to do exits at the end of its input).
    pub(crate) fn let_go(&mut self) {
        if !self.finished {
            let _ = self.conn.tx.send(Request::Eof { id: self.id });
            self.finished = true;
        }
    }

    async fn next_event(&mut self) -> ProcEvent {
        let event = self.events.recv().await;
        if self.full.swap(false, Ordering::AcqRel) {
            self.conn.wake.notify_one();
        }
        match event {
            Some(event) => {
                if matches!(event, ProcEvent::Exit(_) | ProcEvent::Failed(_)) {
                    self.finished = true;
                }
                event
            }
            None => {
                self.finished = true;
                ProcEvent::Failed(ErrorKind::ConnectionLost {
                    host: self.conn.host.to_string(),
                    reason: "the connection closed".into(),
                })
            }
        }
    }
}

#[async_trait]
impl Process for SshProcess {
    async fn next(&mut self) -> ProcEvent {
        self.next_event().await
    }

    async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ErrorKind> {
        for chunk in data.chunks(32 * 1024) {
            let permits = self
                .credit
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| ErrorKind::StdinClosed)?;
            permits.forget();
            if self
                .conn
                .tx
                .send(Request::Stdin {
                    id: self.id,
                    data: chunk.to_vec(),
                })
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    async fn close_stdin(&mut self) {
        let _ = self.conn.tx.send(Request::Eof { id: self.id });
    }

    fn split_stdin(&mut self) -> Option<Box<dyn StdinWriter>> {
        Some(Box::new(SshStdin {
            tx: self.conn.tx.clone(),
            id: self.id,
            credit: self.credit.clone(),
        }))
    }

    async fn terminate(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let (done, wait) = oneshot::channel();
        if self
            .conn
            .tx
            .send(Request::Terminate {
                id: self.id,
                done: Some(done),
            })
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
    }
}

/// A channel's stdin: bytes go to the driver as credit allows (the driver returns credit
/// as it writes them to the channel; closed credit means the channel is gone).
struct SshStdin {
    tx: mpsc::UnboundedSender<Request>,
    id: u64,
    credit: Arc<Semaphore>,
}

#[async_trait]
impl StdinWriter for SshStdin {
    async fn write(&mut self, data: &[u8]) -> Result<usize, ErrorKind> {
        let n = crate::process::take_credit(&self.credit, data).await?;
        if n == 0 {
            return Ok(0);
        }
        self.tx
            .send(Request::Stdin {
                id: self.id,
                data: data[..n].to_vec(),
            })
            .map_err(|_| ErrorKind::StdinClosed)?;
        Ok(n)
    }

    async fn close(&mut self) {
        let _ = self.tx.send(Request::Eof { id: self.id });
    }
}

impl Drop for SshProcess {
    fn drop(&mut self) {
        if !self.finished {
            let (done, wait) = oneshot::channel();
            let request = Request::Terminate {
                id: self.id,
                done: Some(done),
            };
            if self.conn.tx.send(request).is_ok() {
                crate::terminations::register(wait);
            }
        }
    }
}
