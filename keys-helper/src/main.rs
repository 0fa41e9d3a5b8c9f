//! `postern-keys [--data-dir D] LOGIN [FINGERPRINT]`, for sshd:
//!
//! ```text
//! AuthorizedKeysCommand /usr/bin/postern-keys --data-dir /var/lib/postern-agent %u %f
//! AuthorizedKeysCommandUser root
//! ```
//!
//! Always exits 0 with the lines it could build (none means deny); errors go to
//! stderr, which sshd logs.

use std::path::PathBuf;

use clap::Parser;

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
    postern_keys::run(
        cli.data_dir,
        cli.login,
        cli.fingerprint.filter(|f| !f.is_empty()),
    );
}
