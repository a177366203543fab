//! The fleet's delay proxy (`cargo xtask fleet up --rtt MS`): real networks have latency and
//! this kernel has no netem, so every site is reached through a user-space TCP proxy that
//! delivers each chunk `MS/2` after it was read, in each direction, order kept.
//!
//! It runs as `xtask fleet-proxy MS MAPFILE` (a line `LISTEN TARGET` per site), detached like
//! the reaper, prints `ready` once every listener is bound, and is stopped by `fleet down`.
//!
//! It also counts round trips, for the bench: 1 for each connection accepted (TCP's
//! handshake) plus each time a server spoke after its client had (a turn the client waited
//! for). On SIGUSR1 it writes the total so far to `proxy.turns` beside MAPFILE.

use anyhow::{bail, Context, Result};
use polyshell_tests::Fleet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction: bounded, so a slow reader pushes back on the writer.
const IN_FLIGHT: usize = 256;

/// Puts every site of `fleet` behind the proxy on `port` of its own address.
pub fn start(fleet: &mut Fleet, port: u16) -> Result<()> {
    let map = fleet.dir.join("proxy.map");
    let mut lines = String::new();
    for site in fleet.all_sites() {
        lines.push_str(&format!(
            "{addr}:{port} {addr}:{target}\n",
            addr = site.addr,
            target = site.port
        ));
    }
    std::fs::write(&map, lines)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("fleet-proxy")
        .arg(fleet.rtt_ms.to_string())
        .arg(&map);
    crate::fleet::detached(&mut cmd, &fleet.dir.join("proxy.log"))?;
    let mut child = cmd.spawn().context("starting the delay proxy")?;
    fleet.proxy = Some(child.id());
    let stdout = child.stdout.take().context("the proxy's stdout")?;
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready)?;
    if ready.trim() != "ready" {
        bail!("the delay proxy did not start (said {ready:?})");
    }
    let sites = fleet.sites.iter_mut().chain([
        &mut fleet.bastion,
        &mut fleet.proxied,
        &mut fleet.stock_bastion,
        &mut fleet.rsa_only,
        &mut fleet.default_kex,
    ]);
    for site in sites.chain(fleet.shells.iter_mut().map(|s| &mut s.site)) {
        site.port = port;
    }
    Ok(())
}

/// The proxy's body: `fleet-proxy MS MAPFILE`.
pub fn run(args: &[&str]) -> Result<()> {
    let [rtt, map] = args else {
        bail!("usage: xtask fleet-proxy RTT_MS MAPFILE");
    };
    let rtt: u64 = rtt.parse().context("RTT_MS")?;
    let one_way = Duration::from_millis(rtt) / 2;
    let pairs: Vec<(String, String)> = std::fs::read_to_string(map)?
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.to_owned(), b.to_owned()))
        })
        .collect();
    let turns = Path::new(map).with_file_name(TURNS);
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for (listen, target) in pairs {
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            listeners.push((listener, target));
        }
        // Installed before `ready`: SIGUSR1's default would end the proxy.
        let asked = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .context("SIGUSR1 handler")?;
        println!("ready");
        // SAFETY: closing our own stdout; nothing writes to it afterwards.
        unsafe { libc::close(1) };
        tokio::spawn(report_turns(turns, asked));
        for (listener, target) in listeners {
            tokio::spawn(accept(listener, target, one_way));
        }
        std::future::pending::<Result<()>>().await
    })
}

/// The file, beside the proxy's map, where it writes its round trip count when asked.
pub const TURNS: &str = "proxy.turns";

/// Round trips through the proxy since it started, every connection's.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// Which side of one connection spoke last.
#[derive(Default)]
struct Turns {
    last: AtomicU8,
}

const CLIENT: u8 = 1;
const SERVER: u8 = 2;

impl Turns {
    fn spoke(&self, side: u8) {
        if self.last.swap(side, Ordering::Relaxed) == CLIENT && side == SERVER {
            ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes the count to `path` (whole, by rename) at each SIGUSR1.
async fn report_turns(path: PathBuf, mut asked: tokio::signal::unix::Signal) {
    while asked.recv().await.is_some() {
        let tmp = path.with_extension("tmp");
        let count = ROUND_TRIPS.load(Ordering::Relaxed);
        if std::fs::write(&tmp, format!("{count}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// The proxy's round trip count so far: asks the proxy `pid` to write it, and reads it.
pub fn round_trips(pid: u32, dir: &Path) -> Option<u64> {
    let path = dir.join(TURNS);
    let _ = std::fs::remove_file(&path);
    // SAFETY: kill only sends a signal; the proxy installed its handler before `ready`.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
        return None;
    }
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text.trim().parse().ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

async fn accept(listener: TcpListener, target: String, delay: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let target = target.clone();
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed); // TCP's handshake
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else {
                return;
            };
            let turns = Turns::default();
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                delayed(client_read, server_write, delay, (&turns, CLIENT)),
                delayed(server_read, client_write, delay, (&turns, SERVER))
            );
        });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; `side` is who speaks.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    (turns, side): (&Turns, u8),
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reading = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return, // dropping tx ends the writer after the last chunk
                Ok(n) => {
                    turns.spoke(side);
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writing = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
