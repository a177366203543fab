//! Proves the test fleet is real: raw `ssh2` sessions to two sites and, through the bastion,
//! to the proxied site; host keys checked against the fleet's known_hosts; sudo asks.

use polyshell_tests::{Fleet, FleetSite};
use ssh2::{CheckResult, KnownHostFileKind, Session};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Authenticates `session` (handshake done) as the fleet user, after checking its host key.
fn authenticate(fleet: &Fleet, session: &Session, site: &FleetSite) {
    let mut known = session.known_hosts().unwrap();
    known
        .read_file(&fleet.known_hosts, KnownHostFileKind::OpenSSH)
        .unwrap();
    let (key, _) = session.host_key().expect("the server sent a host key");
    assert!(
        matches!(
            known.check_port(&site.addr, site.port, key),
            CheckResult::Match
        ),
        "host key of {} does not match the fleet's known_hosts",
        site.name
    );
    session
        .userauth_pubkey_file(&fleet.user, None, &fleet.identity, None)
        .unwrap_or_else(|e| panic!("{}: public key auth failed: {e}", site.name));
    assert!(session.authenticated());
}

fn connect(fleet: &Fleet, site: &FleetSite) -> Session {
    let tcp = TcpStream::connect((site.addr.as_str(), site.port))
        .unwrap_or_else(|e| panic!("{} ({}): {e}", site.name, site.addr));
    let mut session = Session::new().unwrap();
    session.set_tcp_stream(tcp);
    session.set_timeout(10_000);
    session.handshake().unwrap();
    authenticate(fleet, &session, site);
    session
}

/// Runs `command`, writing `input` to its stdin; returns (exit status, stdout, stderr).
fn exec(session: &Session, command: &str, input: &str) -> (i32, String, String) {
    let mut channel = session.channel_session().unwrap();
    channel.exec(command).unwrap();
    channel.write_all(input.as_bytes()).unwrap();
    channel.send_eof().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    channel.read_to_string(&mut out).unwrap();
    channel.stderr().read_to_string(&mut err).unwrap();
    channel.wait_close().unwrap();
    (channel.exit_status().unwrap(), out, err)
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn two_sites_answer_as_the_test_user() {
    let fleet = Fleet::load();
    assert!(fleet.sites.len() >= 2, "the fleet needs at least two sites");
    for site in &fleet.sites[..2] {
        let session = connect(&fleet, site);
        let (status, user, _) = exec(&session, "id -un", "");
        assert_eq!(
            (status, user.trim()),
            (0, fleet.user.as_str()),
            "{}",
            site.name
        );
        let (_, host, _) = exec(&session, "hostname", "");
        assert_eq!(host.trim(), local_hostname(), "{}", site.name);
        // The server side of the connection is the site's own loopback address.
        let (_, conn, _) = exec(&session, "echo $SSH_CONNECTION", "");
        let server_addr = conn.split_whitespace().nth(2).unwrap_or_default();
        assert_eq!(server_addr, site.addr, "{}", site.name);
    }
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn sudo_asks_for_the_password_every_time() {
    let fleet = Fleet::load();
    let session = connect(&fleet, &fleet.sites[0]);
    let (status, _, _) = exec(&session, "sudo -n true", "");
    assert_ne!(status, 0, "sudo must require a password");
    let marker = "[polyshell-fleet-test]";
    let answer = format!("{}\n", fleet.password);
    for _ in 0..2 {
        let (status, out, err) = exec(&session, &format!("sudo -S -p '{marker}' id -u"), &answer);
        assert_eq!((status, out.trim()), (0, "0"), "stderr: {err}");
        assert!(
            err.contains(marker),
            "sudo did not ask (timestamp reused?): {err}"
        );
    }
    let (status, _, err) = exec(&session, &format!("sudo -S -p '{marker}' id -u"), "wrong\n");
    assert_ne!(status, 0, "a wrong password must be rejected: {err}");
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn proxied_site_is_reached_through_the_bastion() {
    let fleet = Fleet::load();
    let bastion = connect(&fleet, &fleet.bastion);
    let target = &fleet.proxied;
    let channel = bastion
        .channel_direct_tcpip(&target.addr, target.port, None)
        .expect("the bastion forwards");
    let (near, far) = UnixStream::pair().unwrap();
    // Bridge the forwarded channel to one end of a socket pair; the inner session gets the
    // other end. The bastion session is driven by this thread alone, in non-blocking mode.
    bastion.set_blocking(false);
    let bridge = std::thread::spawn(move || pump(channel, far));

    let mut inner = Session::new().unwrap();
    inner.set_tcp_stream(near);
    inner.set_timeout(10_000);
    inner.handshake().unwrap();
    authenticate(&fleet, &inner, target);
    let (status, conn, _) = exec(&inner, "echo $SSH_CONNECTION", "");
    assert_eq!(status, 0);
    assert_eq!(conn.split_whitespace().nth(2), Some(target.addr.as_str()));
    drop(inner);
    bridge.join().unwrap();

    let log = std::fs::read_to_string(fleet.log_of(&fleet.bastion)).unwrap();
    let forwarded = format!("{} port {}", target.addr, target.port);
    assert!(
        log.lines()
            .any(|l| l.contains("direct-tcpip") && l.contains(&forwarded))
            || log
                .lines()
                .any(|l| l.contains("direct") && l.contains(&target.addr)),
        "the bastion's log shows no forwarding to {forwarded}"
    );
}

/// Copies bytes both ways between a forwarded channel and a socket until either side closes.
fn pump(mut channel: ssh2::Channel, mut sock: UnixStream) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 32 * 1024];
    loop {
        let mut idle = true;
        match channel.read(&mut buf) {
            Ok(0) if channel.eof() => return,
            Ok(0) => {}
            Ok(n) => {
                idle = false;
                sock.set_nonblocking(false).unwrap();
                if sock.write_all(&buf[..n]).is_err() {
                    return;
                }
                sock.set_nonblocking(true).unwrap();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                idle = false;
                let mut sent = 0;
                while sent < n {
                    match channel.write(&buf[sent..n]) {
                        Ok(k) => sent += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(_) => return,
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
