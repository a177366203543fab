//! Running a chain of schedules as one batch, with the reporter, the progress line, Ctrl-C
//! handling (first: start nothing new; second: cancel what runs) and the summary.

use crate::exit;
use crate::report::{OutputMode, Reporter, Summary, Terminal};
use crate::shells::{CliShells, ShellSettings, DEFAULT_AGENT};
use polyshell_auth::{Console, ConsoleStream};
use polyshell_sched::ledger::Ledger;
use polyshell_sched::{Batch, EventSink, Jobs, Schedule, Tee};
use polyshell_shell::keeper::Keeper;
use polyshell_sites::SiteStore;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Plan {
    pub sites: SiteStore,
    pub jobs: Jobs,
    pub chain: Vec<Schedule>,
    /// Every site the run may touch (for the summary and alignment).
    pub targets: Vec<String>,
    /// How many action runs (an action on a site) the plan holds: the progress line's total.
    pub actions: usize,
    /// Each target with how many action runs it gets (what the ledger records).
    pub planned: Vec<(String, usize)>,
    /// The Polyfile's `[settings] persist`.
    pub persist: Option<Duration>,
}

pub struct Settings {
    pub output: OutputMode,
    pub shells: ShellSettings,
    pub ask_sudo_pass: bool,
    /// The ledger and the run's header, unless `--no-record`.
    pub record: Option<(Ledger, serde_json::Map<String, serde_json::Value>)>,
}

/// The console of the run in progress, for log lines.
static CONSOLE: std::sync::Mutex<Option<Console>> = std::sync::Mutex::new(None);

/// Writes a log line: through the run's console when a run is on (held during a prompt),
/// else straight to the terminal's writer.
pub(crate) fn log(bytes: &[u8]) {
    let console = CONSOLE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match console {
        Some(console) => console.write(ConsoleStream::Stderr, bytes),
        None => crate::pump::Pump::get().write(ConsoleStream::Stderr, bytes),
    }
}

/// How many SIGINTs this process has had (counted in the handler itself, so none is lost
/// when several arrive before the runtime looks).
fn interrupt_count() -> usize {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: the handler only does an atomic add, which is async-signal-safe.
        let _ = unsafe {
            signal_hook::low_level::register(signal_hook::consts::SIGINT, || {
                COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        };
    });
    COUNT.load(std::sync::atomic::Ordering::SeqCst)
}

pub async fn execute(plan: Plan, settings: Settings) -> u8 {
    let progress = std::io::stderr().is_terminal()
        && matches!(settings.output, OutputMode::Stream | OutputMode::Gather);
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let terminal = Terminal::new(progress);
    let console = {
        let terminal = terminal.clone();
        Console::new(move |stream, bytes| terminal.write(stream, bytes))
            .with_drain(|| crate::pump::Pump::get().drain_within(Duration::from_secs(2)))
    };
    *CONSOLE.lock().unwrap_or_else(|p| p.into_inner()) = Some(console.clone());
    let mut shells = CliShells::new(settings.shells.clone(), Some(console.clone()));
    shells.resident = plan
        .planned
        .iter()
        .filter(|(_, actions)| *actions > 1)
        .map(|(site, _)| site.clone())
        .collect();
    if let Some(persist) = settings.shells.persist {
        // Only sites reached with libssh2 are kept; a run of local sites starts no keeper.
        let over_ssh = plan.targets.iter().any(|name| {
            plan.sites.get(name).is_some_and(|site| {
                matches!(site.host(), Ok(Some(_))) && matches!(site.ssh_program(), Ok(None))
            })
        });
        if over_ssh {
            match Keeper::connect(persist).await {
                Ok(keeper) => shells.keeper = Some(keeper),
                Err(e) => console.write(
                    ConsoleStream::Stderr,
                    format!("polyshell: warning: connections are not kept after this run: {e}\n")
                        .as_bytes(),
                ),
            }
        }
    }
    let shells = Arc::new(shells);
    if settings.ask_sudo_pass {
        // Every agent the run's sites use, in the order of the sites, one prompt each.
        let mut agents: Vec<String> = Vec::new();
        for site in &plan.targets {
            let name = plan
                .sites
                .get(site)
                .and_then(|s| s.password_agent().ok().flatten().map(str::to_owned))
                .unwrap_or_else(|| DEFAULT_AGENT.to_owned());
            if !agents.contains(&name) {
                agents.push(name);
            }
        }
        for name in agents {
            if let Err(e) = shells.agent(&name).prompt_now().await {
                console.write(
                    ConsoleStream::Stderr,
                    format!("polyshell: {e}\n").as_bytes(),
                );
                return exit::SITE_FAILED;
            }
        }
    }
    let reporter = Reporter::new(
        settings.output,
        console.clone(),
        color,
        &plan.targets,
        plan.actions,
    );
    let batch = Batch::new(plan.sites, plan.jobs, shells);
    // The ledger records the run under the batch's id; a ledger that cannot be written is
    // said once, and the run goes on unrecorded.
    let recorder =
        settings
            .record
            .and_then(|(ledger, header)| match ledger.record(batch.id(), header) {
                Ok(recorder) => Some(recorder),
                Err(e) => {
                    console.write(
                        ConsoleStream::Stderr,
                        format!(
                            "polyshell: warning: this run is not recorded: {}: {e}\n",
                            ledger.dir().display()
                        )
                        .as_bytes(),
                    );
                    None
                }
            });
    let events: Arc<dyn EventSink> = match &recorder {
        Some(recorder) => Arc::new(Tee(vec![reporter.clone(), recorder.clone()])),
        None => reporter.clone(),
    };
    let batch = Arc::new(batch.with_events(events));
    let started = Instant::now();

    let interrupts = {
        let (batch, reporter, console) = (batch.clone(), reporter.clone(), console.clone());
        let before = interrupt_count();
        tokio::spawn(async move {
            let mut count = 0;
            while tokio::signal::ctrl_c().await.is_ok() {
                // Two Ctrl-C close together while this thread was busy wake this task once:
                // the signal handler's own count says how many there were.
                let signals = interrupt_count().saturating_sub(before);
                let first = count == 0;
                count = signals.max(count + 1);
                if first {
                    batch.stop();
                    let running = reporter.running_sites();
                    let msg = format!(
                        "polyshell: stopping: no new work starts; {} site(s) still running{} (Ctrl-C again to cancel them)\n",
                        running.len(),
                        if running.is_empty() { String::new() } else { format!(": {}", polyshell_sites::range::fold(&running)) }
                    );
                    console.write(ConsoleStream::Stderr, msg.as_bytes());
                }
                if count >= 2 && !batch.cancelled() {
                    batch.cancel();
                    console.write(
                        ConsoleStream::Stderr,
                        b"polyshell: cancelling running commands\n",
                    );
                }
            }
        })
    };
    let ticker = {
        let (terminal, reporter, console) = (terminal.clone(), reporter.clone(), console.clone());
        tokio::spawn(async move {
            loop {
                // While a prompt is up the progress line is left alone: clearing or drawing
                // it would erase the prompt (the prompt itself starts by clearing the line).
                console.unless_holding(|| terminal.set_status(Some(reporter.status())));
                terminal.flush();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut results = Vec::new();
    let mut code = exit::SUCCESS;
    for schedule in &plan.chain {
        match batch.run(schedule).await {
            Ok(result) => results.push(result),
            Err(e) => {
                console.write(
                    ConsoleStream::Stderr,
                    format!("polyshell: {e}\n").as_bytes(),
                );
                code = exit::USAGE;
                break;
            }
        }
        if batch.stopping() {
            break;
        }
    }
    // Commands cancelled by a second Ctrl-C are being killed on their hosts: let that finish.
    polyshell_shell::flush_terminations(Duration::from_secs(10)).await;
    ticker.abort();
    interrupts.abort();
    terminal.set_status(None);
    reporter.print_gathered();
    let mut summary = Summary::of(&results, &plan.targets, started.elapsed());
    summary.longest_lock_wait = reporter.longest_lock_wait();
    match settings.output {
        OutputMode::Json => {
            let mut line = summary.json().to_string();
            line.push('\n');
            console.write(ConsoleStream::Stdout, line.as_bytes());
        }
        _ => console.write(
            ConsoleStream::Stderr,
            summary.text(std::io::stderr().is_terminal()).as_bytes(),
        ),
    }
    let stopped = batch.stopping();
    if stopped {
        console.write(
            ConsoleStream::Stderr,
            b"polyshell: the run was stopped by Ctrl-C before it finished\n",
        );
    }
    if code == exit::SUCCESS && (stopped || !summary.success()) {
        code = exit::SITE_FAILED;
    }
    if let Some(recorder) = recorder {
        if let Err(e) = recorder.finish(crate::record::summary_json(&summary, code, stopped)) {
            console.write(
                ConsoleStream::Stderr,
                format!(
                    "polyshell: warning: the run's record in {} has no summary: {e}\n",
                    recorder.dir().display()
                )
                .as_bytes(),
            );
        }
    }
    terminal.finish();
    code
}
