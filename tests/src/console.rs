//! The web console's test fixtures: people who sign in as a person does
//! (an invitation, then a password and TOTP they set themselves), for the
//! browser tests and the console's benchmark.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::ssh::{run_with_timeout, text};
use crate::{Bastion, bin};

/// A person with a password and TOTP, set through an invitation as a person
/// does; answers their password and a code for the next sign-in.
pub async fn person(b: &Bastion, name: &str, roles: &[serde_json::Value]) -> (String, String) {
    let (s, v) = b.post("/api/v1/users", json!({ "name": name })).await;
    assert_eq!(s, 201, "{v}");
    for role in roles {
        let (s, v) = b
            .put(&format!("/api/v1/users/{name}/roles"), role.clone())
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, inv) = b
        .post(&format!("/api/v1/users/{name}/invitation"), json!({}))
        .await;
    assert_eq!(s, 201, "{inv}");
    let dir = b.dir.path().join(format!("person-{name}"));
    std::fs::create_dir_all(&dir).expect("a directory for the person");
    let password = format!("{name}'s long enough passphrase");
    std::fs::write(
        dir.join("invitation"),
        inv["invitation"].as_str().expect("an invitation"),
    )
    .expect("the invitation file");
    std::fs::write(dir.join("password"), format!("{password}\n")).expect("the password file");
    let out = run_with_timeout(
        Command::new(bin("postern"))
            .args(["invitation", "accept", &format!("http://{}", b.api)])
            .arg("--invitation-file")
            .arg(dir.join("invitation"))
            .arg("--password-file")
            .arg(dir.join("password"))
            .arg("--totp-secret-file")
            .arg(dir.join("totp"))
            .env_remove("POSTERN_URL")
            .env_remove("POSTERN_TOKEN")
            .env("POSTERN_CONFIG_DIR", &dir)
            .env("HOME", &dir),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    (password, crate::next_totp_code(&dir.join("totp")))
}
