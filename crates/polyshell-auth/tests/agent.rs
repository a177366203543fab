//! The agent's state machine under many concurrent waiters on a multi-threaded runtime.

use polyshell_auth::{
    AgentError, NoPrompter, PasswordAgent, PromptError, PromptRequest, Prompter, ScriptedPrompter,
    SecretString, StaticPrompter,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A prompter that takes a while to answer, so that many requests arrive meanwhile.
struct SlowPrompter {
    asked: AtomicU64,
    answers: Vec<&'static str>,
}

#[async_trait::async_trait]
impl Prompter for SlowPrompter {
    async fn ask(&self, _: &PromptRequest) -> Result<SecretString, PromptError> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst) as usize;
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.answers
            .get(n)
            .map(|a| SecretString::from(a.to_string()))
            .ok_or(PromptError::Unavailable("no more".into()))
    }
}

fn secret_of(pw: &polyshell_auth::Password) -> String {
    String::from_utf8(pw.sudo_answer().to_vec())
        .unwrap()
        .trim_end()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_waiters_one_prompt() {
    for _ in 0..20 {
        let prompter = Arc::new(SlowPrompter {
            asked: AtomicU64::new(0),
            answers: vec!["pw"],
        });
        let agent = Arc::new(PasswordAgent::new("a", prompter.clone()));
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let agent = agent.clone();
                tokio::spawn(async move { agent.password(&format!("s{i}")).await })
            })
            .collect();
        for t in tasks {
            let pw = tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("no lost wake-up")
                .unwrap()
                .unwrap();
            assert_eq!(secret_of(&pw), "pw");
        }
        assert_eq!(prompter.asked.load(Ordering::SeqCst), 1);
        assert_eq!(agent.prompts(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejection_reported_by_many_drops_once() {
    let prompter = Arc::new(SlowPrompter {
        asked: AtomicU64::new(0),
        answers: vec!["wrong", "right"],
    });
    let agent = Arc::new(PasswordAgent::new("a", prompter.clone()));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let agent = agent.clone();
            tokio::spawn(async move {
                let mut pw = agent.password(&format!("s{i}")).await.unwrap();
                while secret_of(&pw) != "right" {
                    agent.rejected(&pw);
                    pw = agent.password(&format!("s{i}")).await.unwrap();
                }
                agent.accepted(&pw);
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(prompter.asked.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_rejections_fail_everyone_fast() {
    let prompter = Arc::new(ScriptedPrompter::new(["a", "b", "c", "d"]));
    let agent = Arc::new(PasswordAgent::new("ops", prompter.clone()));
    for _ in 0..3 {
        let pw = agent.password("s").await.unwrap();
        agent.rejected(&pw);
    }
    let err = agent.password("s").await.unwrap_err();
    assert_eq!(
        err,
        AgentError::Rejected {
            agent: "ops".into(),
            tries: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "sudo rejected the password of agent `ops` 3 times"
    );
    assert_eq!(prompter.asked(), 3);
    agent.reset();
    assert!(agent.password("s").await.is_ok(), "reset asks again");
}

#[tokio::test]
async fn set_reset_and_static_sources() {
    let agent = PasswordAgent::new(
        "x",
        Arc::new(NoPrompter {
            hint: "use -K".into(),
        }),
    );
    let err = agent.password("s").await.unwrap_err();
    assert!(err.to_string().contains("use -K"), "{err}");
    agent.set(SecretString::from("preloaded".to_owned()));
    assert_eq!(secret_of(&agent.password("s").await.unwrap()), "preloaded");

    // A fixed source is never retried after a rejection.
    std::env::set_var("POLYSHELL_TEST_AGENT_PW", "fixed");
    let agent = PasswordAgent::new(
        "env",
        Arc::new(StaticPrompter::from_env("POLYSHELL_TEST_AGENT_PW")),
    );
    let pw = agent.password("s").await.unwrap();
    agent.rejected(&pw);
    assert_eq!(
        agent.password("s").await.unwrap_err(),
        AgentError::RejectedNoRetry {
            agent: "env".into()
        }
    );
    assert!(
        !format!("{pw:?}").contains("fixed"),
        "Debug never shows the secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_prompt_lets_waiters_go_on() {
    struct Hang;
    #[async_trait::async_trait]
    impl Prompter for Hang {
        async fn ask(&self, _: &PromptRequest) -> Result<SecretString, PromptError> {
            std::future::pending().await
        }
    }
    let agent = Arc::new(PasswordAgent::new("h", Arc::new(Hang)));
    let first = tokio::time::timeout(Duration::from_millis(50), agent.password("a")).await;
    assert!(first.is_err());
    agent.set(SecretString::from("later".to_owned()));
    let pw = tokio::time::timeout(Duration::from_secs(1), agent.password("b"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret_of(&pw), "later");
}
