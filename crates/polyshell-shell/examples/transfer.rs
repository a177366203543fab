//! Times an SFTP upload and download of one file: `transfer SSH_CONFIG HOST FILE`.
//! Used by `cargo xtask bench`; prints `upload_secs download_secs`.

use polyshell_shell::{Shell, SshOptions};
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, host, file] = args.as_slice() else {
        return Err("usage: transfer SSH_CONFIG HOST FILE".into());
    };
    let mut opts = SshOptions::new(host);
    opts.ssh_config = Some(config.into());
    let shell = Shell::with_ssh(opts);
    shell.connect().await?;
    let started = Instant::now();
    shell.upload(file, "polyshell-bench.bin").await?;
    let up = started.elapsed().as_secs_f64();
    let back = format!("{file}.back");
    let started = Instant::now();
    shell.download("polyshell-bench.bin", &back).await?;
    let down = started.elapsed().as_secs_f64();
    shell.run("rm -f polyshell-bench.bin").await?;
    std::fs::remove_file(back)?;
    println!("{up:.3} {down:.3}");
    Ok(())
}
