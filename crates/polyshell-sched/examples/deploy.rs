//! The original Polyshell's deploy scenario written against the library: prepare locally,
//! then on every `app` site, in order and site by site: update (two uploads at once),
//! snapshot, deploy (with sudo), snapshot again; a failure alerts the site's admin.
//!
//! The app "servers" here are local directories so the example runs anywhere:
//! `cargo run -p polyshell-sched --example deploy`. Point `host` at real machines (and give
//! `LocalShells` way to a `ShellFactory` that makes SSH shells, as the CLI does) for the real thing.

use polyshell_sched::{action, Batch, Jobs, LocalShells, Mode, Schedule};
use polyshell_sites::{json, SiteStore};
use std::sync::Arc;

/// What the original stored in site configurations as `adminAlert`: a typed value, not data.
struct AdminAlert(Box<Notify>);

/// Sends (title, body) to someone.
type Notify = dyn Fn(&str, &str) + Send + Sync;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stage = std::env::temp_dir().join(format!("polyshell-deploy-{}", std::process::id()));
    let sites = SiteStore::new();
    sites.add(
        "local",
        (),
        json!({ "scripts": stage.join("scripts"), "www": stage.join("www") }),
    );
    sites.add(
        "appsvr-busy",
        ["app", "primary"],
        json!({ "root": stage.join("app1") }),
    );
    sites.add(
        "appsvr-standby",
        "app",
        json!({ "root": stage.join("app2") }),
    );
    sites.update("app", (), json!({ "admin": "admin@example.com" }));
    sites.put_value(
        "app",
        AdminAlert(Box::new(|title, body| {
            eprintln!("ALERT to admin: {title}\n{body}")
        })),
    );

    let mut jobs = Jobs::new();
    jobs.add("prepare", "local", action(|ctx| async move {
        let scripts = ctx.site.string("scripts")?.unwrap_or_default().to_owned();
        let www = ctx.site.string("www")?.unwrap_or_default().to_owned();
        ctx.shell
            .run(format!(
                "mkdir -p {scripts} {www} && echo '<h1>v2</h1>' > {www}/index.html && \
                 printf '#!/bin/sh\\necho backing up\\n' > {scripts}/mybackup && \
                 printf '#!/bin/sh\\necho deployed as $(id -un)\\n' > {scripts}/mydeployscript.sh && chmod +x {scripts}/*"
            ))
            .await?;
        Ok(())
    }));
    let local = sites.get("local").ok_or("no local site")?;
    let (scripts, www) = (
        local.string("scripts")?.unwrap_or_default().to_owned(),
        local.string("www")?.unwrap_or_default().to_owned(),
    );
    jobs.add(
        "update",
        "app",
        action(move |ctx| {
            let (scripts, www) = (scripts.clone(), www.clone());
            async move {
                let root = ctx.site.string("root")?.unwrap_or_default().to_owned();
                // Two uploads at once; the action is done when both are (the original's async()).
                let (shell, dest) = (ctx.shell.clone(), format!("{root}/scripts"));
                ctx.spawn(async move { Ok(shell.upload(&scripts, &dest).await?) });
                let (shell, dest) = (ctx.shell.clone(), format!("{root}/www"));
                ctx.spawn(async move { Ok(shell.upload(&www, &dest).await?) });
                Ok(())
            }
        }),
    );
    jobs.add(
        "snapshot",
        "app",
        action(|ctx| async move {
            let root = ctx.site.string("root")?.unwrap_or_default().to_owned();
            let deployed = ctx
                .shared
                .get(ctx.site.name())
                .is_some_and(|s| s["ok"] == true);
            let out = ctx.shell.run(format!("{root}/scripts/mybackup")).await?;
            ctx.report(format!(
                "snapshot ({}): {}",
                if deployed {
                    "after deploy"
                } else {
                    "before deploy"
                },
                out.stdout_text().trim()
            ));
            Ok(())
        }),
    );
    jobs.add(
        "deploy",
        "app",
        action(|ctx| async move {
            let root = ctx.site.string("root")?.unwrap_or_default().to_owned();
            let out = ctx
                .shell
                .sudo(format!("{root}/scripts/mydeployscript.sh"))
                .await?;
            ctx.shared
                .set(ctx.site.name(), json!({ "ok": out.status.success() }));
            if !out.status.success() {
                if let Some(alert) = ctx.site.value::<AdminAlert>() {
                    (alert.0)(
                        &format!("deploy failed on {}", ctx.site.name()),
                        &out.stderr_text(),
                    );
                }
                return Err(ctx.fail(format!("deploy script: {}", out.status)));
            }
            ctx.report(out.stdout_text().trim().to_owned());
            Ok(())
        }),
    );

    let batch = Batch::new(sites, jobs, Arc::new(LocalShells)).with_events(Arc::new(|e| {
        if let polyshell_sched::Event::Report {
            action,
            site,
            message,
        } = e
        {
            println!("[{action}] {site} : {message}");
        }
    }));
    batch.run(&Schedule::new("prepare")).await?;
    let release = Schedule::new(["update", "snapshot", "deploy", "snapshot"])
        .mode(Mode::SiteSequential)
        .break_on_error(true);
    let result = batch.run(&release).await?;
    let (ok, failed, skipped) = result.counts();
    println!("{ok} actions ok, {failed} failed, {skipped} skipped");
    let _ = std::fs::remove_dir_all(&stage);
    if result.ok() {
        Ok(())
    } else {
        Err(format!("failed: {:?}", result.failed_sites()).into())
    }
}
