//! From a site's configuration to its shell: local (no `host`), libssh2 (the default), or the
//! system `ssh` (site option `ssh`); each with the password agent the site names.

use polyshell_auth::{
    Console, NoPrompter, PasswordAgent, Prompter, StaticPrompter, TerminalPrompter,
};
use polyshell_sched::ShellFactory;
use polyshell_shell::keeper::Keeper;
use polyshell_shell::{HostKeyPolicy, KeyPassphrases, Shell, SshOptions};
use polyshell_sites::Site;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The agent of sites that name none: one typed password for the run.
pub const DEFAULT_AGENT: &str = "default";
/// A non-interactive source of the sudo password, for automation.
pub const PASSWORD_ENV: &str = "POLYSHELL_SUDO_PASSWORD";

/// Settings from the command line that every site's shell gets.
#[derive(Clone, Default)]
pub struct ShellSettings {
    pub connect_timeout: Option<Duration>,
    pub host_key_policy: Option<HostKeyPolicy>,
    pub ssh_config: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    /// Keep SSH connections this long after their last use (`--persist`).
    pub persist: Option<Duration>,
}

pub struct CliShells {
    settings: ShellSettings,
    prompter: Arc<dyn Prompter>,
    agents: Mutex<HashMap<String, Arc<PasswordAgent>>>,
    /// Passphrases of encrypted keys: each asked once for the run.
    passphrases: Arc<KeyPassphrases>,
    /// The connection keeper (`--persist`), when connections are kept.
    pub keeper: Option<Arc<Keeper>>,
    /// Sites that run more than one action: their plain commands share one resident shell
    /// ([`SshOptions::resident_shell`]).
    pub resident: std::collections::HashSet<String>,
}

impl CliShells {
    pub fn new(settings: ShellSettings, console: Option<Console>) -> CliShells {
        let prompter: Arc<dyn Prompter> = if let Some(file) = &settings.password_file {
            Arc::new(StaticPrompter::from_file(file))
        } else if std::env::var_os(PASSWORD_ENV).is_some() {
            Arc::new(StaticPrompter::from_env(PASSWORD_ENV))
        } else if TerminalPrompter::available() {
            Arc::new(TerminalPrompter::new(console.clone()))
        } else {
            Arc::new(NoPrompter {
                hint: format!(
                    "sudo asked for a password and there is no terminal to ask on; set {PASSWORD_ENV} or use --sudo-password-file"
                ),
            })
        };
        CliShells {
            settings,
            prompter,
            agents: Mutex::default(),
            // Key passphrases as OpenSSH asks them, holding live output while asking.
            passphrases: KeyPassphrases::from_environment_with(console),
            keeper: None,
            resident: Default::default(),
        }
    }

    /// The agent called `name` (made on first use).
    pub fn agent(&self, name: &str) -> Arc<PasswordAgent> {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(PasswordAgent::new(name, self.prompter.clone())))
            .clone()
    }
}

impl ShellFactory for CliShells {
    fn shell(&self, site: &Site) -> Result<Shell, polyshell_sites::ConfigError> {
        let agent = self.agent(site.password_agent()?.unwrap_or(DEFAULT_AGENT));
        let shell = match site.host()? {
            None => Shell::local_with(site.sh()?.unwrap_or("sh")),
            Some(host) => match site.ssh_program()? {
                None => {
                    let mut opts = SshOptions::new(host);
                    opts.user = site.user()?.map(str::to_owned);
                    opts.port = site.port()?;
                    opts.identity = site.identity()?.map(PathBuf::from);
                    opts.ssh_config = self.settings.ssh_config.clone();
                    opts.host_key_policy = self.settings.host_key_policy;
                    opts.connect_timeout =
                        site.connect_timeout()?.or(self.settings.connect_timeout);
                    opts.proxy_jump = site.proxy_jump()?.map(str::to_owned);
                    opts.passphrases = Some(self.passphrases.clone());
                    opts.resident_shell = self.resident.contains(site.name());
                    match &self.keeper {
                        Some(keeper) => Shell::with_ssh_kept(opts, keeper),
                        None => Shell::with_ssh(opts),
                    }
                }
                Some(program) => {
                    let mut args = site.ssh_args()?;
                    if let Some(config) = &self.settings.ssh_config {
                        args.splice(0..0, ["-F".to_owned(), config.display().to_string()]);
                    }
                    if let Some(user) = site.user()? {
                        args.extend(["-l".to_owned(), user.to_owned()]);
                    }
                    if let Some(port) = site.port()? {
                        args.extend(["-p".to_owned(), port.to_string()]);
                    }
                    Shell::external_ssh(program, args, host)
                }
            },
        };
        Ok(shell.named(site.name()).with_password_agent(agent))
    }
}
