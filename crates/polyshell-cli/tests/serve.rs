//! `polyshell serve`: the SSE feed replays a run exactly as `--output json` printed it, the API
//! answers, the token guards a non-loopback listener; and in a real headless browser
//! (chromium through chromedriver) a 20-site run's page turns sites from running to ok/failed
//! live, filters, shows one site's output, and shows `<script>` printed by a site as text.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory with a Polyfile and its own ledger.
fn place(polyfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Polyfile.toml"), polyfile).unwrap();
    dir
}

fn polyshell(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polyshell"));
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .env("POLYSHELL_RUNS_DIR", dir.join("runs"));
    cmd
}

/// `polyshell serve` on a free loopback port (killed when dropped), and its base URL.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    let mut child = polyshell(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("serve did not say where it listens: {first:?}"))
        .trim_end_matches('/')
        .to_owned();
    Server { child, url }
}

/// The lines of an SSE stream's `data:` fields, until the server ends it.
fn sse_lines(url: &str) -> Vec<String> {
    let response = ureq::get(url)
        .timeout(Duration::from_secs(60))
        .call()
        .unwrap();
    assert_eq!(
        response.header("content-type"),
        Some("text/event-stream"),
        "{url}"
    );
    BufReader::new(response.into_reader())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

const TWENTY: &str = r#"
[sites."s[01-10]"]
roles = ["web"]
[sites."s[11-20]"]
roles = ["db"]

[[jobs.check]]
roles = ["web", "db"]
run = """
case {name} in s0[1-5]) sleep 4;; *) sleep 1;; esac
echo hello from {name}
test {name} != s13 || echo '<script>alert(1)</script>'
test {name} != s07
"""
"#;

#[test]
fn the_feed_replays_a_run_exactly_as_output_json_printed_it() {
    let dir = place(
        &TWENTY
            .replace("sleep 4", "sleep 0.2")
            .replace("sleep 1", "true"),
    );
    let out = polyshell(dir.path())
        .args(["--output", "json", "jobs", "check", "--mode", "parallel"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let printed: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert!(printed.len() > 40);
    let server = serve(dir.path(), &[]);
    let runs: serde_json::Value = ureq::get(&format!("{}/api/runs", server.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let run = &runs["runs"][0];
    assert_eq!(run["what"], "jobs check");
    assert_eq!(run["ok"], 19);
    assert_eq!(run["failed"], 1);
    let id = run["id"].as_str().unwrap();
    let replayed = sse_lines(&format!("{}/api/runs/{id}/events", server.url));
    assert_eq!(replayed, printed);
    let one: serde_json::Value = ureq::get(&format!("{}/api/runs/{id}", server.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(one["roles"]["web"].as_array().unwrap().len(), 10);
    assert_eq!(one["chain"][0]["jobs"][0], "check");
    assert_eq!(one["summary"]["failed"][0]["site"], "s07");
    // Unknown runs are a 404 with a reason, not an empty feed.
    let missing = ureq::get(&format!("{}/api/runs/nosuch/events", server.url)).call();
    assert!(matches!(missing, Err(ureq::Error::Status(404, _))));
    // The pages and their assets come from the binary.
    let page = ureq::get(&format!("{}/runs/{id}", server.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(page.contains("/assets/run.js"));
    let script = ureq::get(&format!("{}/assets/run.js", server.url))
        .call()
        .unwrap();
    assert_eq!(script.header("content-type"), Some("text/javascript"));
}

#[test]
fn a_token_guards_every_request_and_off_loopback_it_is_required() {
    let dir = place(TWENTY);
    let out = polyshell(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--token"),
        "{}",
        text(&out.stderr)
    );
    let out = polyshell(dir.path())
        .args(["serve", "--token", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let token = "a-long-enough-token-123";
    let server = serve(dir.path(), &["--token", token]);
    for path in ["/", "/api/runs", "/assets/run.js", "/api/runs/x/events"] {
        let denied = ureq::get(&format!("{}{path}", server.url)).call();
        assert!(
            matches!(denied, Err(ureq::Error::Status(401, _))),
            "{path} without the token"
        );
        let wrong = ureq::get(&format!("{}{path}", server.url))
            .set("Authorization", "Bearer a-long-enough-token-124")
            .call();
        assert!(matches!(wrong, Err(ureq::Error::Status(401, _))));
    }
    let ok = ureq::get(&format!("{}/api/runs", server.url))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(ok.status(), 200);
    // `?token=` once sets a cookie the page's own requests carry.
    let page = ureq::get(&format!("{}/?token={token}", server.url))
        .call()
        .unwrap();
    let cookie = page.header("set-cookie").unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let with_cookie = ureq::get(&format!("{}/api/runs", server.url))
        .set("Cookie", cookie.split(';').next().unwrap())
        .call()
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
}

/// chromedriver on a free port (killed when dropped).
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): install Debian's chromium and \
                 chromium-driver (`cargo xtask test` does)"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver, width: u32, height: u32) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session through chromedriver")
}

/// Each site's tile state (`ok`, `running`, ...) and whether it is shown.
async fn tiles(client: &fantoccini::Client) -> Vec<(String, String, bool)> {
    let v = client
        .execute(
            "return [...document.querySelectorAll('.site')].map(e => \
               [e.dataset.site, (e.className.match(/st-(\\w+)/) || [])[1] || '', !e.hidden]);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Waits for the ledger to hold a run; its id.
fn first_run(dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(run) = runs.first() {
            let name = run.file_name().unwrap().to_string_lossy().into_owned();
            return name.rsplit('-').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no run was recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run `cargo xtask test` (it installs them)"]
async fn the_run_page_follows_a_run_live_in_a_real_browser() {
    let dir = place(TWENTY);
    let server = serve(dir.path(), &[]);
    let driver = chromedriver();
    let client = browser(&driver, 1400, 1000).await;
    let mut run = polyshell(dir.path())
        .args(["jobs", "check", "--mode", "parallel"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = first_run(dir.path());
    client
        .goto(&format!("{}/runs/{id}", server.url))
        .await
        .unwrap();

    // Live: running tiles first, then every site ok or failed, without a reload.
    let mut saw_running = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = loop {
        let now = tiles(&client).await;
        saw_running |= now.iter().any(|(_, s, _)| s == "running");
        if now.len() == 20 && now.iter().all(|(_, s, _)| s == "ok" || s == "failed") {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the page never finished: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(saw_running, "no site was ever shown running");
    let failed: Vec<&str> = last
        .iter()
        .filter(|(_, s, _)| s == "failed")
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(failed, ["s07"]);
    assert_eq!(run.wait().unwrap().code(), Some(1));
    // The page was loaded once: the same document still (a marker set now survives).
    client
        .execute("window.__sameDocument = true; return true;", vec![])
        .await
        .unwrap();

    // Filter: failed only.
    client
        .find(fantoccini::Locator::Css("button[data-filter='failed']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown: Vec<String> = tiles(&client)
        .await
        .into_iter()
        .filter(|(_, _, shown)| *shown)
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(shown, ["s07"]);
    client
        .find(fantoccini::Locator::Css("button[data-filter='all']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // One site's output, and a site printing a script tag shows it as text.
    client
        .find(fantoccini::Locator::Css(".site[data-site='s13']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let out = client
        .find(fantoccini::Locator::Id("site-out"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(out.contains("hello from s13"), "{out}");
    assert!(out.contains("<script>alert(1)</script>"), "{out}");
    let scripts = client
        .execute(
            "return document.querySelectorAll('main script').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(scripts, 0);
    assert!(client.get_alert_text().await.is_err(), "an alert is open");
    let summary = client
        .find(fantoccini::Locator::Id("summary"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(summary.contains("20 sites: 19 ok, 1 failed"), "{summary}");
    let same = client
        .execute("return window.__sameDocument === true", vec![])
        .await
        .unwrap();
    assert_eq!(same, true);

    // The index lists the run.
    client.goto(&format!("{}/", server.url)).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(fantoccini::Locator::Css(&format!("tr[data-id='{id}']")))
        .await
        .unwrap();
    client.close().await.unwrap();
}

/// The run page of a finished run with `sites` sites, as a PNG in the build's scratch space
/// (`target/tmp/screenshots`; `docs/` holds copies).
async fn screenshot(driver: &Driver, sites: usize) -> PathBuf {
    let width = if sites > 100 { 3 } else { 2 };
    let dir = place(&format!(
        r#"
[sites."node[{first:0width$}-{last}]"]
roles = ["compute"]
[sites."db[1-4]"]
roles = ["db"]

[locks.two-db]
limit = 2

[[jobs.deploy]]
roles = ["compute", "db"]
run = """
echo "deploying build 4711"
case {{name}} in *7) echo 'disk /srv is 97% full' >&2; exit 1;; *3) echo 'warning: restarted a stuck worker' ;; esac
"""

[[jobs.migrate]]
roles = ["db"]
locks = ["two-db"]
run = "sleep 0.2; echo migrated"

[schedules.release]
chain = [{{ jobs = ["migrate"], mode = "parallel" }},
         {{ jobs = ["deploy"], mode = "parallel", fanout = 50 }}]
"#,
        first = 1,
        last = sites - 4,
    ));
    let out = polyshell(dir.path())
        .args(["schedule", "release"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let id = first_run(dir.path());
    let server = serve(dir.path(), &[]);
    let client = browser(driver, 1400, if sites > 100 { 1500 } else { 1100 }).await;
    client
        .goto(&format!("{}/runs/{id}", server.url))
        .await
        .unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(fantoccini::Locator::Css("#summary.bad"))
        .await
        .unwrap();
    // Something selected, as a person looking at it would have.
    let failed = if sites > 100 { "node017" } else { "node07" };
    client
        .find(fantoccini::Locator::Css(&format!(
            ".site[data-site='{failed}']"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let png = client.screenshot().await.unwrap();
    client.close().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a {}-byte screenshot is blank",
        png.len()
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let path = shots.join(format!("serve-run-{sites}.png"));
    std::fs::write(&path, png).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run `cargo xtask test` (it installs them)"]
async fn screenshots_of_the_run_page_with_20_and_500_sites() {
    let driver = chromedriver();
    for sites in [20, 500] {
        let path = screenshot(&driver, sites).await;
        eprintln!("screenshot: {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programs_own_app_follows_a_batch_through_the_feed() {
    use polyshell_cli::serve::Feed;
    use polyshell_sched::{action, Batch, Jobs, LocalShells, Mode, Schedule};
    use polyshell_sites::{json, SiteStore};
    use std::sync::Arc;

    let feed = Feed::new();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::get({
            let feed = feed.clone();
            move || async move { feed.sse() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A follower from before the batch starts, one after it ended: both get every event.
    let early = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || sse_lines(&url))
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sites = SiteStore::new();
    sites.add(["app1", "app2", "app3"], "app", json!({}));
    let mut jobs = Jobs::new();
    jobs.add(
        "hello",
        "app",
        action(|ctx| async move {
            ctx.shell.run("echo '<b>hi</b>'").await?;
            Ok(())
        }),
    );
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mine = {
        let seen = seen.clone();
        move |e: polyshell_sched::Event| seen.lock().unwrap().push(e.to_json().to_string())
    };
    let batch = Batch::new(sites, jobs, Arc::new(LocalShells)).with_events(Arc::new(
        polyshell_sched::Tee(vec![feed.clone(), Arc::new(mine)]),
    ));
    let result = batch
        .run(&Schedule::new(["hello"]).mode(Mode::Parallel))
        .await
        .unwrap();
    assert!(result.ok());
    feed.close();
    let early = early.await.unwrap();
    let late = tokio::task::spawn_blocking(move || sse_lines(&url))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 11, "{seen:?}");
    assert_eq!(early, seen);
    assert_eq!(late, seen);
}
