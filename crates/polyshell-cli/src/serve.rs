//! `polyshell serve`: a read-only web view of the run ledger, and its event feed.
//!
//! - `/` lists runs (live and finished); `/runs/ID` follows one run live: a grid of sites by
//!   state, filters by state and role, gathered output, one site's output, the chain's
//!   progress and the summary. The pages are embedded in the binary (`assets/`), no CDN.
//! - `GET /api/runs`, `GET /api/runs/ID` (JSON), `GET /api/runs/ID/events` (Server-Sent
//!   Events: each event exactly as `--output json` prints it, replayed from the start and then
//!   followed live from the ledger, ending with the summary line).
//!
//! It starts nothing and holds no secret (the ledger holds none). Loopback by default; any
//! other address needs a token, checked on every request (`Authorization: Bearer`, the
//! `polyshell_token` cookie, or `?token=` once, which sets the cookie).
//!
//! [`Feed`] is the same event feed for a program's own axum app, from an [`EventSink`].

use crate::exit::{self, CliError};
use crate::record::{self, Outcomes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use polyshell_sched::ledger::{Ledger, RunRecord};
use polyshell_sched::{Event, EventSink};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const RUN_HTML: &str = include_str!("../assets/run.html");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const RUN_JS: &str = include_str!("../assets/run.js");
const INDEX_JS: &str = include_str!("../assets/index.js");

/// How often a followed run's events file is looked at for more.
const POLL: Duration = Duration::from_millis(150);

struct App {
    ledger: Ledger,
    token: Option<String>,
}

/// Serves the ledger on `listen` until Ctrl-C.
pub async fn serve(
    ledger: Ledger,
    listen: SocketAddr,
    token: Option<String>,
) -> Result<u8, CliError> {
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(CliError::usage(format!(
            "serve: {listen} is reachable from other machines: give --token TOKEN or \
             --token-file FILE (every request must then carry it), or listen on 127.0.0.1"
        )));
    }
    if token.as_deref().is_some_and(|t| t.len() < 16) {
        return Err(CliError::usage(
            "serve: the token must be at least 16 characters",
        ));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::usage(format!("serve: cannot listen on {listen}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(listen);
    let guarded = token.is_some();
    let app = Arc::new(App { ledger, token });
    let router = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/runs/{id}", get(|| async { Html(RUN_HTML) }))
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css", STYLE_CSS) }),
        )
        .route(
            "/assets/run.js",
            get(|| async { asset("text/javascript", RUN_JS) }),
        )
        .route(
            "/assets/index.js",
            get(|| async { asset("text/javascript", INDEX_JS) }),
        )
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{id}", get(api_run))
        .route("/api/runs/{id}/events", get(api_events))
        .layer(middleware::from_fn_with_state(app.clone(), check_token))
        .with_state(app.clone());
    // The address first, on a line of its own: what a script starting it waits for. A
    // reader that went away (closed pipe) does not stop the server.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "polyshell: serving {} on http://{bound}/",
        app.ledger.dir().display()
    );
    let _ = if guarded {
        writeln!(
            out,
            "polyshell: every request needs the token (open http://{bound}/?token=...)"
        )
    } else {
        writeln!(
            out,
            "polyshell: loopback only, no token; read-only: it starts nothing"
        )
    };
    let _ = out.flush();
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::usage(format!("serve: {e}")))?;
    Ok(exit::SUCCESS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Constant-time comparison: the time taken says nothing of how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn check_token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    // A query string that does not parse is no token (and no reason to refuse a page).
    let query = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    let Some(token) = &app.token else {
        return next.run(request).await;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("polyshell_token="));
    let from_query = query.get("token").map(String::as_str);
    let ok = |t: Option<&str>| t.is_some_and(|t| same(t, token));
    if ok(bearer) || ok(cookie) {
        return next.run(request).await;
    }
    if ok(from_query) {
        let mut response = next.run(request).await;
        if let Ok(value) = HeaderValue::from_str(&format!(
            "polyshell_token={token}; HttpOnly; SameSite=Strict; Path=/"
        )) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    (
        StatusCode::UNAUTHORIZED,
        "polyshell serve: this server needs its token (?token=..., or Authorization: Bearer ...)\n",
    )
        .into_response()
}

fn not_found(id: &str, why: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("run {id}: {why}")})),
    )
        .into_response()
}

/// One line of the runs list.
fn run_line(run: &RunRecord) -> Value {
    let o = Outcomes::of(run);
    let h = &run.header;
    json!({
        "id": run.id,
        "started": h.get("started"),
        "what": h.get("what"),
        "targets": h.get("targets"),
        "sites": h.get("sites").and_then(Value::as_object).map(|m| m.len()).unwrap_or(0),
        "ok": o.summary.ok.len(),
        "failed": o.summary.failed.len(),
        "skipped": o.summary.skipped.len(),
        "unfinished": o.unfinished.len(),
        "finished": o.finished,
        "running": o.running,
        "elapsed_ms": o.summary.elapsed.as_millis() as u64,
    })
}

async fn api_runs(State(app): State<Arc<App>>) -> Response {
    let ledger = app.ledger.clone();
    let listed = tokio::task::spawn_blocking(move || {
        ledger
            .runs()
            .map(|runs| runs.iter().map(run_line).collect::<Vec<_>>())
    })
    .await;
    match listed {
        Ok(Ok(runs)) => Json(json!({ "runs": runs })).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": format!("cannot read the ledger: {e}")})),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn api_run(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let ledger = app.ledger.clone();
    let found = tokio::task::spawn_blocking(move || {
        let run = ledger.find(&id).map_err(|e| (id.clone(), e))?;
        let mut v = run_line(&run);
        for key in ["argv", "cwd", "sites", "roles", "chain"] {
            v[key] = run.header.get(key).cloned().unwrap_or(Value::Null);
        }
        v["summary"] = match Outcomes::of(&run) {
            o if o.finished => o.summary.json(),
            _ => Value::Null,
        };
        Ok::<Value, (String, String)>(v)
    })
    .await;
    match found {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err((id, e))) => not_found(&id, e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Following one run's events file.
struct Follow {
    run: RunRecord,
    offset: u64,
    partial: Vec<u8>,
    pending: std::collections::VecDeque<String>,
    done: bool,
}

impl Follow {
    /// Reads what was appended since (a piece of it); complete lines become pending events.
    /// Whether anything was read.
    fn read_more(&mut self) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.run.dir.join("events.jsonl");
        let Ok(mut file) = std::fs::File::open(path) else {
            return false;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        // At most 1 MiB a look: a long record is sent in pieces, the thread never held long.
        let mut bytes = Vec::new();
        if file.take(1 << 20).read_to_end(&mut bytes).is_err() {
            return false;
        }
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            // Only events (what `--output json` prints), not the ledger's own notes.
            if Event::from_json(&v).is_some() {
                self.pending.push_back(v.to_string());
            }
        }
        !bytes.is_empty()
    }

    /// The next line to send, waiting for the run when there is none yet; `None` at the end.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.done {
                return None;
            }
            let dir = self.run.dir.clone();
            let finished = tokio::task::spawn_blocking(move || dir.join("summary.json").exists())
                .await
                .unwrap_or(false);
            if self.read_more() || !self.pending.is_empty() {
                continue;
            }
            if finished {
                // The summary is written after the last event: all is read. The summary line
                // as `--output json` ends with it.
                self.done = true;
                if let Ok(run) = self.reload() {
                    let o = Outcomes::of(&run);
                    return Some(o.summary.json().to_string());
                }
                return None;
            }
            if !record::recorder_alive(&self.run) {
                // Killed: what was recorded is all there will be.
                self.done = true;
                return Some(json!({"event": "unfinished", "id": self.run.id}).to_string());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn reload(&self) -> Result<RunRecord, ()> {
        let summary = std::fs::read(self.run.dir.join("summary.json")).map_err(drop)?;
        let mut run = self.run.clone();
        run.summary = serde_json::from_slice(&summary).map_err(drop)?;
        Ok(run)
    }
}

async fn api_events(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let ledger = app.ledger.clone();
    let lookup = id.clone();
    let run = match tokio::task::spawn_blocking(move || ledger.find(&lookup)).await {
        Ok(Ok(run)) => run,
        Ok(Err(e)) => return not_found(&id, e),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let follow = Follow {
        run,
        offset: 0,
        partial: Vec::new(),
        pending: Default::default(),
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let line = f.next().await?;
        Some((Ok::<_, Infallible>(SseEvent::default().data(line)), f))
    });
    sse(stream)
}

fn sse(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A live event feed for a program's own web app: an [`EventSink`] that keeps the run's
/// events (as `--output json` prints them) and hands them to any number of followers, each
/// from the start. Route [`Feed::sse`] wherever you like.
///
/// ```no_run
/// # async fn demo() {
/// use polyshell_cli::serve::Feed;
/// use std::sync::Arc;
///
/// let feed = Feed::new();
/// let app: axum::Router = axum::Router::new().route(
///     "/events",
///     axum::routing::get({
///         let feed = feed.clone();
///         move || async move { feed.sse() }
///     }),
/// );
/// // ... Batch::new(...).with_events(feed.clone()) ... then feed.close() when it is done.
/// # let _ = app;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Feed {
    inner: Arc<FeedInner>,
}

#[derive(Default)]
struct FeedInner {
    state: Mutex<FeedState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct FeedState {
    lines: Vec<String>,
    closed: bool,
}

impl Feed {
    /// An empty feed; hand it to a run as an event sink and to `serve` to show.
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed::default())
    }

    /// Adds a line of JSON of your own (a summary, say) for every follower.
    pub fn push(&self, line: Value) {
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state.lines.push(line.to_string());
        drop(state);
        self.inner.changed.notify_waiters();
    }

    /// No more events: followers' streams end once they have everything.
    pub fn close(&self) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.inner.changed.notify_waiters();
    }

    /// Server-Sent Events: every event so far, then each one as it comes, until `close`.
    pub fn sse(&self) -> Response {
        let inner = self.inner.clone();
        let stream = futures::stream::unfold((inner, 0usize), |(inner, next)| async move {
            loop {
                let line = {
                    let shared = inner.clone();
                    // Registered before the state is looked at: a push in between still
                    // wakes it.
                    let changed = shared.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    let line = {
                        let state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
                        match state.lines.get(next) {
                            Some(line) => Some(line.clone()),
                            None if state.closed => return None,
                            None => None,
                        }
                    };
                    if line.is_none() {
                        changed.await;
                    }
                    line
                };
                if let Some(line) = line {
                    let event = SseEvent::default().data(line);
                    return Some((Ok::<_, Infallible>(event), (inner, next + 1)));
                }
            }
        });
        sse(stream)
    }
}

impl EventSink for Feed {
    fn event(&self, event: Event) {
        self.push(event.to_json());
    }
}
