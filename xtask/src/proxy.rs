//! The fleet's delay proxy (`cargo xtask fleet up --rtt MS`): real networks have latency and
//! this kernel has no netem, so every site is reached through a user-space TCP proxy that
//! delivers each chunk `MS/2` after it was read, in each direction, order kept.
//!
//! It runs as `xtask fleet-proxy MS MAPFILE` (a line `LISTEN TARGET` per site), detached like
//! the reaper, prints `ready` once every listener is bound, and is stopped by `fleet down`.

use anyhow::{bail, Context, Result};
use polyshell_tests::Fleet;
use std::process::Command;
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
        println!("ready");
        // SAFETY: closing our own stdout; nothing writes to it afterwards.
        unsafe { libc::close(1) };
        for (listener, target) in listeners {
            tokio::spawn(accept(listener, target, one_way));
        }
        std::future::pending::<Result<()>>().await
    })
}

async fn accept(listener: TcpListener, target: String, delay: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                delayed(client_read, server_write, delay),
                delayed(server_read, client_write, delay)
            );
        });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reading = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return, // dropping tx ends the writer after the last chunk
                Ok(n) => {
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
