//! `postern-keys [--data-dir D] LOGIN [FINGERPRINT]`, for sshd:
//!
//! ```text
//! AuthorizedKeysCommand /usr/local/bin/postern-keys --data-dir /var/lib/postern-agent %u %f
//! AuthorizedKeysCommandUser root
//! ```
//!
//! Always exits 0 with the lines it could build (none means deny); errors go to
//! stderr, which sshd logs.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use postern_keys::{AGENT_TIMEOUT, Query, answer, log_break_glass, now_ms};

#[derive(Parser)]
#[command(
    name = "postern-keys",
    version,
    about = "sshd's AuthorizedKeysCommand for Postern (use with %u %f)"
)]
struct Cli {
    /// The agent's data directory (its socket and grants file live there).
    #[arg(long, default_value = "/var/lib/postern-agent")]
    data_dir: PathBuf,
    /// The login sshd asks about (%u).
    login: String,
    /// The offered key's fingerprint (%f); empty or absent means any key.
    fingerprint: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let q = Query {
        data_dir: cli.data_dir,
        login: cli.login,
        fingerprint: cli.fingerprint.filter(|f| !f.is_empty()),
        now_ms: now_ms(),
    };
    match answer(&q, AGENT_TIMEOUT) {
        Ok(a) => {
            if let Some(e) = &a.agent_error {
                eprintln!("postern-keys: {e}; answered from the grants file");
            }
            if a.break_glass > 0 {
                log_break_glass(&q.data_dir, &q.login, a.break_glass, q.now_ms);
                eprintln!(
                    "postern-keys: bastion unreachable beyond the grace; offering {} break-glass key(s) for {}",
                    a.break_glass, q.login
                );
            }
            let mut out = String::new();
            for l in &a.lines {
                out.push_str(l);
                out.push('\n');
            }
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
        }
        Err(e) => eprintln!("postern-keys: {e}; denying"),
    }
}
