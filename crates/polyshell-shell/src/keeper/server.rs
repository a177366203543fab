//! The keeper process: holds SSH connections between invocations and runs its clients'
//! commands on them. One per user; its socket's directory is the user's alone, and every
//! client's uid is checked (`SO_PEERCRED`) before a word is read.

use super::wire::{self, Ask, KeptInfo, Tell, WireOptions};
use crate::error::ErrorKind;
use crate::process::{ProcEvent, Process};
use crate::ssh::runner::OnRunner;
use crate::ssh::{resolve, AgentChoice, SshOptions, SshProcess, SshTransport};
use crate::{HostKeyPolicy, KeyPassphrases};
use polyshell_auth::NoPrompter;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Output a channel may have in flight to its client before the client says it consumed it.
const OUTPUT_WINDOW: i64 = 1024 * 1024;
/// Frames queued for one client's socket before channels wait for it.
const OUTBOX: usize = 1024;
/// How often idle connections are looked at.
const TICK: Duration = Duration::from_millis(500);
/// A keeper holding nothing and serving no one exits; not before this, so that the client
/// that started it can connect.
const GRACE: Duration = Duration::from_secs(3);

/// The hint a connection needing a typed passphrase fails with in the keeper.
const NO_PROMPT: &str = "the connection keeper asks for no passphrase";

/// One kept connection.
struct Kept {
    site: String,
    /// `user@hostname:port`, and the bastions it goes through.
    host: String,
    /// The host name alone, for `close` patterns.
    hostname: String,
    transport: SshTransport,
    /// Counts passphrase requests: one means the site needs its client to connect itself.
    passphrases: Arc<KeyPassphrases>,
    created: Instant,
    last_used: Mutex<Instant>,
    /// Clients using it now.
    in_use: AtomicUsize,
    /// Channels open on it now.
    channels: AtomicUsize,
    persist_ms: AtomicU64,
    /// `connections close` asked for it while in use: closed when released.
    closing: std::sync::atomic::AtomicBool,
}

impl Kept {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle(&self) -> Duration {
        if self.in_use.load(Ordering::Acquire) > 0 || self.channels.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn info(&self) -> KeptInfo {
        KeptInfo {
            site: self.site.clone(),
            host: self.host.clone(),
            age_secs: self.created.elapsed().as_secs(),
            idle_secs: self.idle().as_secs(),
            in_use: self.in_use.load(Ordering::Acquire) as u64,
            persist_secs: self.persist_ms.load(Ordering::Acquire) / 1000,
        }
    }
}

#[derive(Default)]
struct Table {
    kept: Mutex<HashMap<String, Arc<Kept>>>,
    clients: AtomicUsize,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Kept>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops what is idle past its time, dead, or asked closed; whether anything is left.
    fn reap(&self) -> bool {
        let mut kept = self.lock();
        kept.retain(|_, k| {
            let busy =
                k.in_use.load(Ordering::Acquire) > 0 || k.channels.load(Ordering::Acquire) > 0;
            let expired = k.idle() >= Duration::from_millis(k.persist_ms.load(Ordering::Acquire));
            let dead = !k.transport.is_connected();
            let drop = !busy && (expired || dead || k.closing.load(Ordering::Acquire));
            if drop {
                tracing::debug!(site = %k.site, "keeper: closing a kept connection");
                // An idle runner ends at the end of its input (waited for here, off the
                // table's lock; its drop would not wait).
                if let Some(runner) = k.transport.idle_runner() {
                    tokio::spawn(runner.close());
                }
            }
            !drop
        });
        !kept.is_empty()
    }
}

/// Runs the keeper on the socket in `dir` until it holds nothing and serves no one.
pub(crate) async fn serve(dir: &Path) -> Result<(), String> {
    super::check_dir(dir)?;
    let _lock = match super::lock_file(dir)? {
        Some(mut lock) => {
            // Its pid, for `ps` and for tests that check it is gone.
            use std::io::Write;
            let _ = lock.set_len(0);
            let _ = write!(lock, "{}", std::process::id());
            lock
        }
        None => return Ok(()), // another keeper runs: it serves
    };
    let path = dir.join(super::SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let table = Arc::new(Table::default());
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let peer = stream.peer_cred().map(|c| c.uid());
                if peer.as_ref().ok() != Some(&uid) {
                    tracing::warn!(?peer, "keeper: refused a client of another user");
                    tokio::spawn(refuse(stream));
                    continue;
                }
                table.clients.fetch_add(1, Ordering::AcqRel);
                let table = table.clone();
                tokio::spawn(async move {
                    client(stream, &table).await;
                    table.clients.fetch_sub(1, Ordering::AcqRel);
                });
            }
            _ = tick.tick() => {
                let holding = table.reap();
                if !holding && table.clients.load(Ordering::Acquire) == 0 && started.elapsed() > GRACE {
                    break;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn refuse(mut stream: UnixStream) {
    let _ = wire::write(
        &mut stream,
        &Tell::Refused {
            reason: "this keeper serves only the user that runs it".into(),
        },
    )
    .await;
}

/// What a channel's task hears from its client.
enum Control {
    Stdin(Vec<u8>),
    Eof,
    Consumed(u64),
    Terminate,
}

/// One client, until its socket closes: then its commands still running are terminated and
/// its connections released.
async fn client(stream: UnixStream, table: &Arc<Table>) {
    let (mut input, mut output) = stream.into_split();
    let (outbox, mut frames) = mpsc::channel::<Vec<u8>>(OUTBOX);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Some(frame) = frames.recv().await {
            if output.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let conns: Arc<Mutex<HashMap<u64, Arc<Kept>>>> = Arc::default();
    let mut chans: HashMap<u64, mpsc::UnboundedSender<Control>> = HashMap::new();
    let mut input = tokio::io::BufReader::with_capacity(256 * 1024, &mut input);
    loop {
        let ask: Ask = match wire::read(&mut input).await {
            Ok(Some(ask)) => ask,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("keeper: a client's message: {e}");
                break;
            }
        };
        chans.retain(|_, c| !c.is_closed());
        match ask {
            Ask::Hello { .. } => {
                send(
                    &outbox,
                    &Tell::Hello {
                        version: wire::VERSION,
                    },
                )
                .await
            }
            Ask::Connect {
                conn,
                options,
                persist_ms,
            } => {
                let (table, conns, outbox) = (table.clone(), conns.clone(), outbox.clone());
                tokio::spawn(async move {
                    let tell = match connect(&table, options, persist_ms).await {
                        Ok(kept) => {
                            kept.touch();
                            conns
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(conn, kept);
                            Tell::Connected {
                                conn,
                                marker: crate::ssh::pid_marker().to_string(),
                            }
                        }
                        Err((kind, needs_prompt)) => Tell::ConnectFailed {
                            conn,
                            error: (&kind).into(),
                            needs_prompt,
                        },
                    };
                    send(&outbox, &tell).await;
                });
            }
            Ask::Release { conn } => {
                let kept = conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&conn);
                if let Some(kept) = kept {
                    release(&kept);
                }
            }
            Ask::Open {
                conn,
                chan,
                script,
                pty,
                bulk,
                plain,
            } => {
                let kept = conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&conn)
                    .cloned();
                let Some(kept) = kept else {
                    let error = ErrorKind::Keeper(format!("no connection {conn} for this client"));
                    send(&outbox, &wire::tell_event(chan, &ProcEvent::Failed(error))).await;
                    continue;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                chans.insert(chan, tx);
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    kept.channels.fetch_add(1, Ordering::AcqRel);
                    kept.touch();
                    let control = match plain {
                        Some(plain) => on_runner(&kept, chan, &plain, rx, &outbox).await,
                        None => Some(rx),
                    };
                    if let Some(control) = control {
                        channel(&kept, chan, script, pty, bulk, control, &outbox).await;
                    }
                    kept.touch();
                    kept.channels.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Ask::Stdin { chan, data } => control(&chans, chan, Control::Stdin(data)),
            Ask::Eof { chan } => control(&chans, chan, Control::Eof),
            Ask::Consumed { chan, bytes } => control(&chans, chan, Control::Consumed(bytes)),
            Ask::Terminate { chan } => match chans.get(&chan) {
                Some(tx) if tx.send(Control::Terminate).is_ok() => {}
                _ => send(&outbox, &Tell::Terminated { chan }).await, // it had ended
            },
            Ask::List => {
                let mut list: Vec<KeptInfo> = table
                    .lock()
                    .values()
                    .filter(|k| k.transport.is_connected())
                    .map(|k| k.info())
                    .collect();
                list.sort_by(|a, b| a.site.cmp(&b.site).then(a.host.cmp(&b.host)));
                send(&outbox, &Tell::Listing(list)).await;
            }
            Ask::Close { patterns } => {
                let count = close(table, &patterns);
                send(&outbox, &Tell::Closed { count }).await;
            }
        }
    }
    // The client is gone: its channels' tasks see their control end and terminate.
    drop(chans);
    for kept in conns.lock().unwrap_or_else(|p| p.into_inner()).drain() {
        release(&kept.1);
    }
    drop(outbox);
    let _ = writer.await;
}

fn release(kept: &Kept) {
    kept.touch();
    kept.in_use.fetch_sub(1, Ordering::AcqRel);
}

fn control(chans: &HashMap<u64, mpsc::UnboundedSender<Control>>, chan: u64, what: Control) {
    if let Some(tx) = chans.get(&chan) {
        let _ = tx.send(what);
    }
}

async fn send(outbox: &mpsc::Sender<Vec<u8>>, tell: &Tell) {
    match wire::frame(tell) {
        Ok(frame) => {
            let _ = outbox.send(frame).await;
        }
        Err(e) => tracing::warn!("keeper: cannot encode a message: {e}"),
    }
}

/// Closes the kept connections matching `patterns` (all for none): now when idle, at their
/// release when in use. How many.
fn close(table: &Table, patterns: &[String]) -> u64 {
    let mut count = 0;
    for kept in table.lock().values() {
        let matches = patterns.is_empty()
            || patterns
                .iter()
                .any(|p| wildcard(p, &kept.site) || wildcard(p, &kept.hostname));
        if matches {
            kept.closing.store(true, Ordering::Release);
            count += 1;
        }
    }
    table.reap();
    count
}

/// `*` and `?` matching, as in ssh_config's `Host` patterns.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The kept connection for `options`, connected now if it is not; `true` with the error when
/// the site needs a passphrase typed (its client connects it itself).
async fn connect(
    table: &Table,
    options: WireOptions,
    persist_ms: u64,
) -> Result<Arc<Kept>, (ErrorKind, bool)> {
    let passphrases = KeyPassphrases::new(Arc::new(NoPrompter {
        hint: NO_PROMPT.into(),
    }));
    let agent = match &options.agent_socket {
        Some(path) => AgentChoice::Path(path.clone()),
        None => AgentChoice::None,
    };
    let opts = SshOptions {
        host: options.host.clone(),
        user: options.user.clone(),
        port: options.port,
        identity: options.identity.clone(),
        ssh_config: options.ssh_config.clone(),
        known_hosts: options.known_hosts.clone(),
        host_key_policy: options.policy.map(|p| match p {
            0 => HostKeyPolicy::Strict,
            1 => HostKeyPolicy::AcceptNew,
            _ => HostKeyPolicy::Off,
        }),
        connect_timeout: options.connect_timeout_ms.map(Duration::from_millis),
        keepalive: options.keepalive_ms.map(Duration::from_millis),
        proxy_jump: options.proxy_jump.clone(),
        passphrases: Some(passphrases.clone()),
        // The keeper hands plain commands to the connection's runner itself.
        resident_shell: false,
    };
    let target = resolve(&opts).map_err(|k| (k, false))?;
    // What makes two connections different: where, as whom, with which keys, through which
    // bastions, checked against which host keys.
    let key = format!(
        "{}|{}|{}|{}|{:?}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}",
        target.alias,
        target.hostname,
        target.port,
        target.user,
        target.identities,
        target.certificates,
        target.identities_only,
        target.jumps,
        target.known_hosts,
        target.host_key_alias,
        target.policy,
        options.ssh_config,
    );
    let kept = table
        .lock()
        .entry(key)
        .or_insert_with(|| {
            let mut host = format!("{}@{}:{}", target.user, target.hostname, target.port);
            for jump in &target.jumps {
                host.push_str(&format!(" via {jump}"));
            }
            Arc::new(Kept {
                site: target.alias.clone(),
                host,
                hostname: target.hostname.clone(),
                transport: SshTransport::with_agent(opts, Some(agent)),
                passphrases,
                created: Instant::now(),
                last_used: Mutex::new(Instant::now()),
                in_use: AtomicUsize::new(0),
                channels: AtomicUsize::new(0),
                persist_ms: AtomicU64::new(persist_ms),
                closing: Default::default(),
            })
        })
        .clone();
    // In use from here (not reaped while connecting); the latest invocation's --persist is
    // the one that counts (as with ControlPersist).
    kept.in_use.fetch_add(1, Ordering::AcqRel);
    kept.persist_ms.store(persist_ms, Ordering::Release);
    kept.closing.store(false, Ordering::Release);
    match kept.transport.open_connection().await {
        Ok(()) => Ok(kept),
        Err(kind) => {
            release(&kept);
            Err((kind, kept.passphrases.prompts() > 0))
        }
    }
}

/// One command on a kept connection, until it ends or its client terminates it or goes away.
async fn channel(
    kept: &Kept,
    chan: u64,
    script: String,
    pty: bool,
    bulk: bool,
    mut control: mpsc::UnboundedReceiver<Control>,
    outbox: &mpsc::Sender<Vec<u8>>,
) {
    let mut process = match kept.transport.open_script(script.clone(), pty, bulk).await {
        Ok(p) => p,
        Err(kind) => {
            send(outbox, &wire::tell_event(chan, &ProcEvent::Failed(kind))).await;
            return;
        }
    };
    let mut window = OUTPUT_WINDOW;
    let mut stdin: Option<mpsc::UnboundedSender<Option<Vec<u8>>>> = None;
    let mut closed = false; // the client closed the input
    let mut fresh = true; // nothing written to it yet: may be started again
    loop {
        tokio::select! {
            event = process.next(), if window > 0 => {
                let again = match &event {
                    ProcEvent::Failed(ErrorKind::LostBeforeStart { .. }) if fresh => {
                        // The kept connection was dead: the command never ran. Once more on
                        // a new connection (the transport reconnects a dead one).
                        tracing::debug!(site = %kept.site, "keeper: a kept connection was stale; reconnecting");
                        true
                    }
                    ProcEvent::Failed(ErrorKind::Channel { .. }) if fresh => {
                        // Refused (a server's MaxSessions): the idle runner may hold the
                        // session; once it is closed, once more.
                        match kept.transport.idle_runner() {
                            Some(runner) => {
                                runner.close().await;
                                true
                            }
                            None => false,
                        }
                    }
                    _ => false,
                };
                if again {
                    fresh = false;
                    match kept.transport.open_script(script.clone(), pty, bulk).await {
                        Ok(p) => {
                            process = p;
                            // The input's end, if the client sent it, goes to the new one.
                            stdin = None;
                            if closed {
                                let tx = stdin.get_or_insert_with(|| stdin_task(&mut process, chan, outbox.clone()));
                                let _ = tx.send(None);
                            }
                            continue;
                        }
                        Err(kind) => {
                            send(outbox, &wire::tell_event(chan, &ProcEvent::Failed(kind))).await;
                            return;
                        }
                    }
                }
                if let ProcEvent::Output(_, data) = &event {
                    window -= data.len() as i64;
                }
                let last = matches!(event, ProcEvent::Exit(_) | ProcEvent::Failed(_));
                send(outbox, &wire::tell_event(chan, &event)).await;
                if last {
                    return;
                }
            }
            what = control.recv() => match what {
                Some(Control::Stdin(data)) => {
                    fresh = false;
                    let tx = stdin.get_or_insert_with(|| stdin_task(&mut process, chan, outbox.clone()));
                    let _ = tx.send(Some(data));
                }
                Some(Control::Eof) => {
                    closed = true;
                    let tx = stdin.get_or_insert_with(|| stdin_task(&mut process, chan, outbox.clone()));
                    let _ = tx.send(None);
                }
                Some(Control::Consumed(bytes)) => window += bytes as i64,
                Some(Control::Terminate) => {
                    process.terminate().await;
                    send(outbox, &Tell::Terminated { chan }).await;
                    return;
                }
                None => {
                    // The client went away (killed, Ctrl-C): its command goes too.
                    process.terminate().await;
                    return;
                }
            }
        }
    }
}

/// Runs a plain command on the connection's runner (started if there is none). `None` when
/// the command ran there; otherwise its control, for a channel of its own: the runner is busy, could not start, or was found gone (a
/// dead connection: the channel reconnects).
async fn on_runner(
    kept: &Kept,
    chan: u64,
    script: &str,
    mut control: mpsc::UnboundedReceiver<Control>,
    outbox: &mpsc::Sender<Vec<u8>>,
) -> Option<mpsc::UnboundedReceiver<Control>> {
    // The input's end, sent meanwhile, waits in `control` for a channel of its own.
    let Some(mut on) =
        OnRunner::start(kept.transport.runner(), &kept.transport, script, false).await
    else {
        return Some(control);
    };
    let mut window = OUTPUT_WINDOW;
    loop {
        tokio::select! {
            event = on.next(), if window > 0 => {
                if let ProcEvent::Output(_, data) = &event {
                    window -= data.len() as i64;
                }
                let last = matches!(event, ProcEvent::Exit(_) | ProcEvent::Failed(_));
                send(outbox, &wire::tell_event(chan, &event)).await;
                if last {
                    return None;
                }
            }
            what = control.recv() => match what {
                Some(Control::Stdin(_) | Control::Eof) => {} // a plain command takes none
                Some(Control::Consumed(bytes)) => window += bytes as i64,
                Some(Control::Terminate) => {
                    on.terminate().await;
                    send(outbox, &Tell::Terminated { chan }).await;
                    return None;
                }
                None => {
                    // The client went away (killed, Ctrl-C): its command goes too.
                    on.terminate().await;
                    return None;
                }
            }
        }
    }
}

/// A task writing a channel's input as it comes, telling the client how much was written.
fn stdin_task(
    process: &mut SshProcess,
    chan: u64,
    outbox: mpsc::Sender<Vec<u8>>,
) -> mpsc::UnboundedSender<Option<Vec<u8>>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
    let Some(mut writer) = process.split_stdin() else {
        return tx;
    };
    tokio::spawn(async move {
        while let Some(piece) = rx.recv().await {
            let Some(data) = piece else {
                writer.close().await;
                break;
            };
            let mut at = 0;
            while at < data.len() {
                match writer.write(&data[at..]).await {
                    Ok(0) | Err(_) => {
                        at = data.len();
                        break;
                    }
                    Ok(n) => at += n,
                }
            }
            send(
                &outbox,
                &Tell::Credit {
                    chan,
                    bytes: at as u64,
                },
            )
            .await;
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards_match_as_ssh_config_host_patterns() {
        assert!(wildcard("web*", "web01"));
        assert!(wildcard("*", ""));
        assert!(wildcard("w?b0*", "web01"));
        assert!(wildcard("site1", "site1"));
        assert!(!wildcard("site1", "site10"));
        assert!(!wildcard("web*", "db1"));
        assert!(wildcard("*.example.*", "a.example.org"));
    }
}
