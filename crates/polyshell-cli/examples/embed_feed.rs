//! polyshell's live event feed inside your own axum app: a batch's events, as
//! `polyshell serve` sends them (Server-Sent Events, each line as `--output json` prints it),
//! at `/events` of a server you own.
//!
//! `cargo run -p polyshell-cli --example embed_feed`, then `curl -N http://127.0.0.1:PORT/events`.
use polyshell_cli::serve::Feed;
use polyshell_sched::{action, Batch, Jobs, LocalShells, Mode, Schedule};
use polyshell_sites::{json, SiteStore};
use std::sync::Arc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let feed = Feed::new();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::get({
            let feed = feed.clone();
            move || async move { feed.sse() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("follow: curl -N http://{}/events", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let sites = SiteStore::new();
    sites.add(["app1", "app2", "app3"], "app", json!({}));
    let mut jobs = Jobs::new();
    jobs.add(
        "hello",
        "app",
        action(|ctx| async move {
            ctx.shell
                .run("sleep 1; echo hello from $(hostname)")
                .await?;
            Ok(())
        }),
    );
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells)).with_events(feed.clone());
    let result = batch
        .run(&Schedule::new(["hello"]).mode(Mode::Parallel))
        .await;
    feed.push(json!({"event": "done", "ok": result.map(|r| r.ok()).unwrap_or(false)}));
    feed.close();
    // Serve the finished feed until Ctrl-C: late followers get the whole run.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = server => {}
    }
    Ok(())
}
