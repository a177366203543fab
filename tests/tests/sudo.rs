//! sudo through the password agent against the fleet, whose test user's sudo asks for the
//! password every time. Every test also checks that the password shows up nowhere: not in
//! output, errors, or anything traced at TRACE level during the whole run.

mod common;

use common::{bounded, ssh};
use polyshell_auth::{PasswordAgent, ScriptedPrompter};
use polyshell_shell::{Command, Line, OutputSink, Shell, ShellError};
use polyshell_tests::Fleet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Everything traced, at TRACE level, by every test of this binary.
fn traced() -> &'static Mutex<Vec<u8>> {
    static TRACE: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    static INIT: OnceLock<()> = OnceLock::new();
    let buffer = TRACE.get_or_init(Mutex::default);
    INIT.get_or_init(|| {
        struct Writer;
        impl Write for Writer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                traced().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Writer)
            .init();
    });
    buffer
}

/// Every output line any shell streamed.
#[derive(Default)]
struct AllOutput(Mutex<Vec<u8>>);

impl OutputSink for AllOutput {
    fn line(&self, issuer: &str, line: Line<'_>) {
        let mut all = self.0.lock().unwrap();
        all.extend_from_slice(issuer.as_bytes());
        all.extend_from_slice(line.bytes);
        all.push(b'\n');
    }
}

struct Group {
    shells: Vec<Shell>,
    output: Arc<AllOutput>,
}

fn group(fleet: &Fleet, sites: std::ops::Range<usize>, agent: &Arc<PasswordAgent>) -> Group {
    let output = Arc::new(AllOutput::default());
    let shells = fleet.sites[sites]
        .iter()
        .map(|s| {
            ssh(fleet, &s.name)
                .with_sink(output.clone())
                .with_password_agent(agent.clone())
        })
        .collect();
    Group { shells, output }
}

/// The agent `ops`, answering with `answers` in turn, and its prompter (to count the asks).
fn ops_agent<S: Into<String>>(
    answers: impl IntoIterator<Item = S>,
) -> (Arc<ScriptedPrompter>, Arc<PasswordAgent>) {
    let prompter = Arc::new(ScriptedPrompter::new(answers));
    let agent = Arc::new(PasswordAgent::new("ops", prompter.clone()));
    (prompter, agent)
}

async fn sudo_all(g: &Group, command: &str) -> Vec<Result<polyshell_shell::Output, ShellError>> {
    let runs = g.shells.iter().map(|s| s.sudo(command));
    bounded("sudo on every site", 120, futures::future::join_all(runs)).await
}

/// Fails if the fleet's password appears in any of `texts`, the streamed output or the trace.
fn assert_secret_nowhere(fleet: &Fleet, g: &Group, texts: &[String]) {
    let pw = fleet.password.as_bytes();
    let find = |hay: &[u8]| memchr_find(hay, pw);
    assert!(
        !find(&g.output.0.lock().unwrap()),
        "the password was in the streamed output"
    );
    assert!(
        !find(&traced().lock().unwrap()),
        "the password was in the trace"
    );
    for t in texts {
        assert!(!find(t.as_bytes()), "the password was in: {t}");
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn describe(results: &[Result<polyshell_shell::Output, ShellError>]) -> Vec<String> {
    results
        .iter()
        .map(|r| match r {
            Ok(o) => format!("{:?} {} {}", o.status, o.stdout_text(), o.stderr_text()),
            Err(e) => format!("{e} / {e:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn twenty_sites_one_prompt() {
    traced();
    let fleet = Fleet::load();
    let (prompter, agent) = ops_agent([fleet.password.clone()]);
    let g = group(&fleet, 0..20, &agent);
    let results = sudo_all(&g, "id -u").await;
    let texts = describe(&results);
    for r in &results {
        let out = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.stdout_text(), "0\n");
        assert_eq!(out.stderr_text(), "", "no prompt or marker in the output");
    }
    assert_eq!(prompter.asked(), 1);
    assert_secret_nowhere(&fleet, &g, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn a_wrong_then_a_right_answer_two_prompts() {
    traced();
    let fleet = Fleet::load();
    let (prompter, agent) = ops_agent(["not-the-password".to_owned(), fleet.password.clone()]);
    let g = group(&fleet, 20..40, &agent);
    let results = sudo_all(&g, "id -u").await;
    let texts = describe(&results);
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|o| o.stdout_text() == "0\n")),
        "{texts:?}"
    );
    assert_eq!(prompter.asked(), 2);
    assert_secret_nowhere(&fleet, &g, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn three_wrong_answers_fail_every_site_without_hanging() {
    traced();
    let fleet = Fleet::load();
    let (prompter, agent) = ops_agent(["wrong1", "wrong2", "wrong3", "never-asked"]);
    let g = group(&fleet, 40..60, &agent);
    let results = sudo_all(&g, "id -u").await;
    let texts = describe(&results);
    for r in &results {
        let err = r.as_ref().expect_err("must fail");
        assert!(
            err.to_string().contains("sudo rejected the password"),
            "{err}"
        );
    }
    assert_eq!(prompter.asked(), 3);
    assert_secret_nowhere(&fleet, &g, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn two_agents_prompt_separately() {
    traced();
    let fleet = Fleet::load();
    let (p1, p2) = (
        Arc::new(ScriptedPrompter::new([fleet.password.clone()])),
        Arc::new(ScriptedPrompter::new([fleet.password.clone()])),
    );
    let (a1, a2) = (
        Arc::new(PasswordAgent::new("web", p1.clone())),
        Arc::new(PasswordAgent::new("db", p2.clone())),
    );
    let (g1, g2) = (group(&fleet, 60..70, &a1), group(&fleet, 70..80, &a2));
    let (r1, r2) = tokio::join!(sudo_all(&g1, "id -u"), sudo_all(&g2, "id -u"));
    assert!(r1
        .iter()
        .chain(&r2)
        .all(|r| r.as_ref().is_ok_and(|o| o.stdout_text() == "0\n")));
    assert_eq!((p1.asked(), p2.asked()), (1, 1));
    let mut texts = describe(&r1);
    texts.extend(describe(&r2));
    assert_secret_nowhere(&fleet, &g1, &texts);
    assert_secret_nowhere(&fleet, &g2, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn run_sudo_is_routed_pty_mode_and_input_work() {
    traced();
    let fleet = Fleet::load();
    let (prompter, agent) = ops_agent([fleet.password.clone()]);
    let g = group(&fleet, 80..81, &agent);
    let shell = &g.shells[0];
    let out = shell.run("sudo id -u").await.unwrap();
    assert_eq!(out.stdout_text(), "0\n");
    // sudo's own options: only the prompt is added.
    let out = shell.run("sudo -u polytest id -un").await.unwrap();
    assert_eq!(out.stdout_text(), "polytest\n");
    // Input reaches the command under sudo, after the password.
    let out = shell
        .sudo(Command::new("cat").stdin("to root"))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "to root");
    // On a pty (hosts with requiretty) stdout and stderr merge; the prompt is still hidden.
    let out = shell.sudo(Command::new("id -u").pty(true)).await.unwrap();
    assert_eq!(out.stdout_text().trim(), "0", "{:?}", out.stdout_text());
    assert_eq!(
        prompter.asked(),
        1,
        "the cached password served every command"
    );
    let texts = describe(&[Ok(out)]);
    assert_secret_nowhere(&fleet, &g, &texts);
}

#[tokio::test]
#[ignore = "needs sudo installed (cargo xtask test installs it): run `cargo xtask test`"]
async fn local_sudo_that_does_not_ask_is_a_plain_run() {
    // CI runs as root: sudo lets root through without a password.
    let agent = Arc::new(PasswordAgent::new(
        "none",
        Arc::new(ScriptedPrompter::new(Vec::<String>::new())),
    ));
    let shell = Shell::local().with_password_agent(agent.clone());
    let out = shell.sudo("id -u").await.unwrap();
    assert_eq!(out.stdout_text(), "0\n");
    assert_eq!(out.stderr_text(), "");
    assert_eq!(agent.prompts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn sudo_inside_a_command_elevates_only_what_follows_it() {
    traced();
    let fleet = Fleet::load();
    let (prompter, agent) = ops_agent([fleet.password.clone()]);
    let g = group(&fleet, 81..82, &agent);
    let shell = &g.shells[0];
    let me = shell.run("id -un").await.unwrap().stdout_text();
    assert_ne!(me, "root\n");
    // `sudo a && b`: only `a` runs as root.
    let out = shell.run("sudo id -un && id -un").await.unwrap();
    assert_eq!(out.stdout_text(), format!("root\n{me}"), "{out:?}");
    // sudo after the start of the command, twice (the fleet's sudo asks every time), once in
    // a subshell: each invocation is answered from the one typed password.
    let out = shell
        .run("cd /tmp && sudo pwd && x=$(sudo id -un) && echo \"[$x]\" && id -un")
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), format!("/tmp\n[root]\n{me}"), "{out:?}");
    assert!(
        !out.stderr_text().contains("polyshell"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(prompter.asked(), 1);
    // A command with input cannot share it with a sudo in its middle: a clear error.
    let err = shell
        .run(Command::new("cat >/dev/null; sudo true").stdin("data"))
        .await
        .expect_err("input and an inline sudo");
    assert!(
        err.to_string().contains("start the command with sudo"),
        "{err}"
    );
    let texts = describe(&[Ok(out)]);
    assert_secret_nowhere(&fleet, &g, &texts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SSH test fleet: run `cargo xtask test`"]
async fn sudo_inside_a_command_asks_again_after_a_wrong_answer() {
    traced();
    let fleet = Fleet::load();
    let (prompter, agent) = ops_agent(["not-the-password".to_owned(), fleet.password.clone()]);
    let g = group(&fleet, 82..84, &agent);
    let runs = g.shells.iter().map(|s| s.run("echo start && sudo id -u"));
    let results = bounded("inline sudo", 120, futures::future::join_all(runs)).await;
    let texts = describe(&results);
    for r in &results {
        let out = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
        // Nothing ran twice: the same sudo took the second answer.
        assert_eq!(out.stdout_text(), "start\n0\n", "{texts:?}");
    }
    assert_eq!(prompter.asked(), 2, "{texts:?}");
    assert_secret_nowhere(&fleet, &g, &texts);
}
