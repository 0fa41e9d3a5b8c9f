//! `postern`, the command line for people and scripts. It speaks only the
//! documented REST API, through `postern-client`.
//!
//! Exit status: 0 when everything asked for succeeded; 1 when a command ran
//! but some node did not succeed; 2 when the request itself failed (bad
//! arguments, not logged in, refused, bastion unreachable); 3 when `exec`
//! submitted its command but lost the live view before the end (the command
//! was accepted and runs: never submit it again on 3); 130 after Ctrl-C.

mod admin;
mod audit;
mod bots;
mod config;
mod context;
mod exec;
mod keys;
mod kube;
mod login;
mod output;
mod recordings;
mod show;
mod ssh_names;
mod sso;
mod totp;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use thiserror::Error;

pub use context::Ctx;

/// What went wrong, as the user is told it.
#[derive(Debug, Error)]
pub enum CliError {
    /// The arguments, the environment or the stored login.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Client(#[from] postern_client::ClientError),
    /// Some node did not succeed; the details were printed.
    #[error("{0}")]
    NodesFailed(String),
    /// The user pressed Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// `exec` submitted its command (the bastion accepted it and it runs) but
    /// could not follow it to its end. Not 2: a wrapper that retries a failed
    /// request must not submit this one again.
    #[error("{0}")]
    LiveViewLost(String),
    /// `recordings verify` found a recording changed, or could not check it.
    #[error("{0}")]
    VerifyFailed(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::NodesFailed(_) | CliError::VerifyFailed(_) => 1,
            CliError::LiveViewLost(_) => 3,
            CliError::Interrupted => 130,
            _ => 2,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    version,
    about = "Run commands on fleets of Linux hosts, reach them with SSH, and read the audit log, through a Postern bastion",
    long_about = "Run commands on fleets of Linux hosts, reach them with SSH, and read the audit log, through a Postern bastion.\n\n\
Log in once with `postern login URL`; scripts may instead set POSTERN_URL and POSTERN_TOKEN.\n\n\
Exit status: 0 when everything succeeded; 1 when a command ran but some node did not succeed; \
2 when the request failed (arguments, login, permission, bastion unreachable); 3 when exec's \
command was submitted but its live view was lost (it runs: follow it with postern show, do not \
submit it again); 130 after Ctrl-C."
)]
pub struct Cli {
    /// The bastion's REST API, e.g. http://127.0.0.1:8080 (default: where you logged in)
    #[arg(long, global = true, env = "POSTERN_URL", value_name = "URL")]
    url: Option<String>,
    /// Read the API token from this file instead of the stored login
    /// (POSTERN_TOKEN in the environment also works)
    #[arg(long, global = true, env = "POSTERN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A private CA (PEM) for an https:// bastion
    #[arg(long, global = true, env = "POSTERN_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The project and edge a command works on.
#[derive(Debug, Clone, Args)]
pub struct Scope {
    /// The project (default: POSTERN_PROJECT, or the only one you can see)
    #[arg(
        short,
        long,
        global = true,
        env = "POSTERN_PROJECT",
        value_name = "PROJECT"
    )]
    project: Option<String>,
    /// The edge (default: POSTERN_EDGE, or the project's only edge)
    #[arg(short, long, global = true, env = "POSTERN_EDGE", value_name = "EDGE")]
    edge: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectOnly {
    /// The project (default: POSTERN_PROJECT, or the only one you can see)
    #[arg(
        short,
        long,
        global = true,
        env = "POSTERN_PROJECT",
        value_name = "PROJECT"
    )]
    project: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Log in to a bastion: checks the token and stores it (0600) for later commands
    Login(login::LoginArgs),
    /// End the session at the bastion and forget it (and its SSH key) here
    Logout,
    /// kubectl through the bastion: `kube config` prints a kubeconfig, `kube
    /// credentials` is the credential plugin it runs
    Kube(kube::KubeArgs),
    /// Invitations: `invitation accept URL` sets your password and enrols
    /// TOTP; `invitation create USER` makes one (org admins)
    Invitation(login::InvitationArgs),
    /// Who the token belongs to, and their roles
    Whoami {
        /// JSON, as the API answers it
        #[arg(long)]
        json: bool,
    },
    /// The projects you can see; `projects create NAME` (org admins)
    Projects(admin::ProjectsArgs),
    /// A project's edges; `edges create NAME` (project admins)
    Edges(admin::EdgesArgs),
    /// An edge's nodes; `nodes approve NODE` lets a node that joined in,
    /// `nodes kube-gateway NODE [--revoke]` grants its Kubernetes gateway role
    Nodes(admin::NodesArgs),
    /// Make a token with which nodes join an edge, and print the join command
    JoinToken(admin::JoinTokenArgs),
    /// Users and their roles (org admins)
    Users(admin::UsersArgs),
    /// A project's bots (service accounts for automation); `bots create NAME`
    Bots(bots::BotsArgs),
    /// Run a command or a script on nodes, with live output
    Exec(exec::ExecArgs),
    /// The project's executions, newest first
    History(show::HistoryArgs),
    /// One execution: its state and every node's output
    Show(show::ShowArgs),
    /// Stop an execution: nodes not started never start, running ones are killed
    Cancel(show::CancelArgs),
    /// Your SSH public keys: add, list, rm
    Keys(keys::KeysArgs),
    /// An ssh_config block (and known_hosts) so that `ssh NODE` and Ansible go through the bastion
    SshConfig(keys::SshConfigArgs),
    /// The audit log, newest first, with filters; --follow for new entries
    Audit(audit::AuditArgs),
    /// Recorded SSH sessions (and ssh -J ones, which are not): list, show,
    /// verify, rm; `recordings policy PROJECT` shows or sets what is recorded
    #[command(alias = "recording")]
    Recordings(recordings::RecordingsArgs),
    /// Play a recorded session in the terminal, or print it (--format text|cast)
    Play(recordings::PlayArgs),
    /// Shell completions for bash, zsh, fish, elvish or powershell
    Completions { shell: clap_complete::Shell },
    /// The man page (roff), e.g. `postern man | man -l -`; with --dir, one
    /// page per command (postern.1, postern-exec.1, postern-nodes-approve.1…)
    Man {
        /// Write every page into this directory instead of the top one to stdout
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// Runs the CLI; the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Interrupted) => ExitCode::from(130),
        Err(e) => {
            if !e.to_string().is_empty() {
                eprintln!("{}", output::error_line(&e.to_string()));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let global = context::Global {
        url: cli.url,
        token_file: cli.token_file,
        ca_file: cli.ca_file,
    };
    match cli.cmd {
        Cmd::Login(a) => login::login(&global, a).await,
        Cmd::Logout => login::logout(&global).await,
        Cmd::Invitation(a) => login::invitation(&global, a).await,
        Cmd::Kube(a) => kube::run(&global, a).await,
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "postern", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir: None } => {
            let man = clap_mangen::Man::new(Cli::command());
            man.render(&mut std::io::stdout())
                .map_err(|e| CliError::Usage(format!("cannot write the man page: {e}")))
        }
        // Every page the top one names in SEE ALSO, so none of them is missing.
        Cmd::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), &dir).map_err(|e| {
                CliError::Usage(format!(
                    "cannot write the man pages into {}: {e}",
                    dir.display()
                ))
            })
        }
        cmd => {
            let ctx = Ctx::new(&global)?;
            match cmd {
                Cmd::Whoami { json } => login::whoami(&ctx, json).await,
                Cmd::Projects(a) => admin::projects(&ctx, a).await,
                Cmd::Edges(a) => admin::edges(&ctx, a).await,
                Cmd::Nodes(a) => admin::nodes(&ctx, a).await,
                Cmd::JoinToken(a) => admin::join_token(&ctx, a).await,
                Cmd::Users(a) => admin::users(&ctx, a).await,
                Cmd::Bots(a) => bots::bots(&ctx, a).await,
                Cmd::Exec(a) => exec::exec(&ctx, a).await,
                Cmd::History(a) => show::history(&ctx, a).await,
                Cmd::Show(a) => show::show(&ctx, a).await,
                Cmd::Cancel(a) => show::cancel(&ctx, a).await,
                Cmd::Keys(a) => keys::keys(&ctx, a).await,
                Cmd::SshConfig(a) => keys::ssh_config(&ctx, a).await,
                Cmd::Audit(a) => audit::audit(&ctx, a).await,
                Cmd::Recordings(a) => recordings::recordings(&ctx, a).await,
                Cmd::Play(a) => recordings::play(&ctx, a).await,
                Cmd::Login(_)
                | Cmd::Logout
                | Cmd::Invitation(_)
                | Cmd::Kube(_)
                | Cmd::Completions { .. }
                | Cmd::Man { .. } => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
