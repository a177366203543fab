//! `polyshell` on a real terminal (a pty): the progress line and the output never tear each
//! other, the summary renders, and `-K` asks for the password without echoing it.

use expectrl::session::OsSession;
use expectrl::{Eof, Expect, Session};
use polyshell_tests::Fleet;
use std::process::Command;
use std::time::Duration;

fn session(fleet: &Fleet, args: &[&str]) -> OsSession {
    session_with_config(&fleet.ssh_config, args)
}

fn session_with_config(config: &std::path::Path, args: &[&str]) -> OsSession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polyshell"));
    cmd.args(["--ssh-config", &config.display().to_string()])
        .env_remove("SSH_ASKPASS")
        .args(args)
        .env("NO_COLOR", "1")
        .env(
            "POLYSHELL_RUNS_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/runs"),
        )
        .env_remove("POLYSHELL_SUDO_PASSWORD");
    let mut session = Session::spawn(cmd).expect("a pty");
    session.set_expect_timeout(Some(Duration::from_secs(120)));
    session
}

/// `text` as a Polyfile in a directory of its own (kept while the guard lives); its path.
fn polyfile(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Polyfile.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

fn strip_ansi(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn progress_line_and_output_never_tear() {
    let fleet = Fleet::load();
    let mut s = session(
        &fleet,
        &[
            "-H",
            "site[201-250]",
            "run",
            "--",
            "sleep 1; echo done-line-$(id -un)",
        ],
    );
    let all = s.expect(Eof).expect("polyshell ends");
    let text = strip_ansi(&[all.before(), all.as_bytes()].concat());
    assert!(
        text.contains("[polyshell] "),
        "a progress line was drawn: {text}"
    );
    assert!(text.contains("running"), "{text}");
    // The progress line counts against the total.
    assert!(text.contains("/50 done, "), "{text}");
    for i in 201..=250 {
        let line = format!("site{i} | done-line-polytest");
        assert!(text.contains(&line), "`{line}` torn or missing in:\n{text}");
    }
    // Every output line is whole: the progress line never sits inside one.
    for line in text.split(['\n', '\r']).filter(|l| l.contains("done-line")) {
        assert!(
            line.starts_with("site") && line.ends_with("done-line-polytest"),
            "torn: {line:?}"
        );
    }
    assert!(
        text.contains("polyshell: 50 sites: 50 ok, 0 failed, 0 skipped"),
        "{text}"
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn ask_sudo_pass_prompts_silently() {
    let fleet = Fleet::load();
    let mut s = session(
        &fleet,
        &["-K", "-H", "site[251-255]", "run", "--sudo", "--", "id -u"],
    );
    s.expect("sudo password for agent `default`")
        .expect("the prompt");
    s.send_line(&fleet.password).unwrap();
    let rest = s.expect(Eof).expect("polyshell ends");
    let text = strip_ansi(&[rest.before(), rest.as_bytes()].concat());
    assert!(
        !text.contains(&fleet.password),
        "the password was echoed: {text}"
    );
    for i in 251..=255 {
        assert!(text.contains(&format!("site{i} | 0")), "{text}");
    }
    assert!(text.contains("5 sites: 5 ok"), "{text}");
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn ctrl_c_at_the_prompt_aborts_the_run_cleanly() {
    let fleet = Fleet::load();
    let marker = "/tmp/polyshell-never-ran";
    let _ = std::fs::remove_file(marker);
    let mut s = session(
        &fleet,
        &[
            "-K",
            "-H",
            "site256",
            "run",
            "--sudo",
            "--",
            &format!("touch {marker}"),
        ],
    );
    s.expect("sudo password for agent `default`")
        .expect("the prompt");
    s.send([0x03u8]).unwrap(); // Ctrl-C
    let rest = s.expect(Eof).expect("polyshell ends");
    let text = strip_ansi(&[rest.before(), rest.as_bytes()].concat());
    assert!(
        text.contains("prompt of agent `default` was aborted"),
        "{text}"
    );
    assert!(
        !std::path::Path::new(marker).exists(),
        "nothing may run after an aborted prompt"
    );
}

/// The terminal is given back as it was (echo on) when a prompt is abandoned with Ctrl-C,
/// though the thread reading it is still blocked: why `tty.rs` restores the terminal from
/// the aborting side, which `rpassword` (restoring only when its read returns) cannot.
#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn ctrl_c_at_the_prompt_gives_the_terminal_back_with_echo_on() {
    let fleet = Fleet::load();
    let script = format!(
        // The shell outlives the Ctrl-C (a trap, not an ignore: polyshell gets the default).
        // Echo on first (a pty may start without it), as an operator's terminal has it.
        "trap true INT; stty echo; {} --ssh-config {} -K -H site256 run --sudo -- true; stty -a | tr ';' '\\n' | grep -w -- '-\\?echo'; echo STTY-DONE",
        env!("CARGO_BIN_EXE_polyshell"),
        fleet.ssh_config.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .env("NO_COLOR", "1")
        .env(
            "POLYSHELL_RUNS_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/runs"),
        )
        .env_remove("POLYSHELL_SUDO_PASSWORD");
    let mut s = Session::spawn(cmd).expect("a pty");
    s.set_expect_timeout(Some(Duration::from_secs(120)));
    s.expect("sudo password for agent `default`")
        .expect("the prompt");
    s.send([0x03u8]).unwrap(); // Ctrl-C
    let rest = s.expect("STTY-DONE").expect("stty ran after polyshell");
    let text = strip_ansi(rest.before());
    let flags: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.trim_start_matches('-') == "echo")
        .collect();
    assert_eq!(
        flags,
        ["echo"],
        "the terminal's echo after the aborted prompt: {text}"
    );
}

/// A tmux server of the test's own (its own socket), running one window of `cols` x `rows`.
struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "150",
                "-y",
                "50",
            ])
            .arg(command)
            .status()
            .expect("tmux is installed by `cargo xtask test`");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket, _dir: dir }
    }

    /// What the screen shows now, line by line (what a person reads).
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, literal: &str) {
        let run = |args: &[&str]| {
            Command::new("tmux")
                .arg("-S")
                .arg(&self.socket)
                .args(args)
                .status()
                .unwrap()
        };
        run(&["send-keys", "-l", literal]);
        run(&["send-keys", "Enter"]);
    }

    /// Waits (up to `secs`) until the screen shows `text`.
    fn wait_for(&self, text: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`{text}` never showed; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

#[test]
#[ignore = "needs the SSH test fleet and tmux: run `cargo xtask test`"]
fn a_mid_run_prompt_stays_on_the_screen_until_answered() {
    let fleet = Fleet::load();
    // No -K: the prompt comes mid-run, with the progress line ticking and -vv logging, while
    // another site finishes its work (output and log lines) during the wait.
    let (_dir, polyfile) = polyfile(
        r#"
[sites."site[301-319]"]
host = "{name}"
roles = ["asks"]

[sites.site320]
host = "site320"
roles = ["talks"]

[[jobs.mixed]]
roles = ["asks"]
sudo = "id -u"

[[jobs.mixed]]
roles = ["talks"]
run = "sleep 1.5; echo talking"
"#,
    );
    let command = format!(
        "env -u POLYSHELL_SUDO_PASSWORD NO_COLOR=1 {} -vv --ssh-config {} -f {} jobs mixed --mode parallel; echo EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_polyshell"),
        fleet.ssh_config.display(),
        polyfile
    );
    let tmux = Tmux::start(&command);
    let prompt = "sudo password for agent `default`";
    tmux.wait_for(prompt, 60);
    // The progress line ticks every 200 ms: for 3 s, every look at the screen shows the prompt.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut looks = 0;
    while std::time::Instant::now() < until {
        let screen = tmux.screen();
        // Log lines (-vv) and output are held while it waits: it is the last line.
        let last = screen.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.contains(prompt),
            "the prompt is not the last line after {looks} looks:\n{screen}"
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.keys(&fleet.password);
    let screen = tmux.wait_for("EXIT=", 120);
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(screen.contains("20 sites: 20 ok"), "{screen}");
    assert!(
        !screen.contains(&fleet.password),
        "the password is on the screen:\n{screen}"
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn ask_sudo_pass_asks_for_every_agent_the_run_uses() {
    let fleet = Fleet::load();
    let (_dir, polyfile) = polyfile(
        r#"
[sites.site260]
host = "site260"
roles = ["all-of-them"]
password_agent = "web"

[sites.site261]
host = "site261"
roles = ["all-of-them"]
password_agent = "db"

[sites.site262]
host = "site262"
roles = ["all-of-them"]

[[jobs.who]]
roles = ["all-of-them"]
sudo = "id -u"
"#,
    );
    let mut s = session(&fleet, &["-K", "-f", &polyfile, "jobs", "who"]);
    for agent in ["web", "db", "default"] {
        s.expect(format!("sudo password for agent `{agent}`").as_str())
            .unwrap_or_else(|e| panic!("no prompt for agent {agent}: {e}"));
        s.send_line(&fleet.password).unwrap();
    }
    let rest = s.expect(Eof).expect("polyshell ends");
    let text = strip_ansi(&[rest.before(), rest.as_bytes()].concat());
    assert!(text.contains("3 sites: 3 ok"), "{text}");
    assert!(
        !text.contains("sudo password"),
        "asked again mid-run: {text}"
    );
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn an_encrypted_key_is_asked_for_once_on_the_terminal_for_twenty_sites() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet.ssh_config_with_key(dir.path(), &fleet.locked_identity);
    let prompt = format!(
        "[polyshell] passphrase for key {}",
        fleet.locked_identity.display()
    );
    // The right passphrase first: one prompt. A wrong one first: a second prompt says "try 2".
    for answers in [
        vec![fleet.key_passphrase.as_str()],
        vec!["wrong-one", &fleet.key_passphrase],
    ] {
        let mut s = session_with_config(
            &config,
            &[
                "-vvv",
                "-H",
                "site[001-020]",
                "run",
                "--",
                "echo up-$(id -un)",
            ],
        );
        for (n, answer) in answers.iter().enumerate() {
            let shown = s.expect(prompt.as_str()).expect("the passphrase prompt");
            let line_end = s.expect(": ").expect("the end of the prompt");
            let asked = strip_ansi(line_end.before());
            if n > 0 {
                assert!(asked.contains("try 2"), "{asked}");
            }
            drop(shown);
            s.send_line(answer).unwrap();
        }
        let rest = s.expect(Eof).expect("polyshell ends");
        let text = strip_ansi(&[rest.before(), rest.as_bytes()].concat());
        assert!(text.contains("20 sites: 20 ok"), "{text}");
        assert_eq!(
            text.matches(&prompt).count(),
            0,
            "asked again after the answer: {text}"
        );
        assert!(
            !text.contains(&fleet.key_passphrase),
            "the passphrase was echoed or logged"
        );
        assert!(text.contains("DEBUG"), "-vvv logs were on");
    }
}

#[test]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
fn ctrl_c_at_the_passphrase_prompt_aborts_the_run_cleanly() {
    let fleet = Fleet::load();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet.ssh_config_with_key(dir.path(), &fleet.locked_identity);
    let marker = dir.path().join("never-ran");
    let mut s = session_with_config(
        &config,
        &[
            "-H",
            "site[021-030]",
            "run",
            "--",
            &format!("touch {}", marker.display()),
        ],
    );
    s.expect("[polyshell] passphrase for key")
        .expect("the prompt");
    s.send([0x03u8]).unwrap(); // Ctrl-C
    let rest = s.expect(Eof).expect("polyshell ends");
    let text = strip_ansi(&[rest.before(), rest.as_bytes()].concat());
    assert!(text.contains("the passphrase prompt was aborted"), "{text}");
    assert!(text.contains("10 sites: 0 ok"), "{text}");
    assert!(!marker.exists(), "nothing may run after an aborted prompt");
}
