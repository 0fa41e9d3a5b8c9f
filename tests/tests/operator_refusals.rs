//! What an operator meets when a start cannot go ahead, as a new operator met it
//! following the README from the packages: a master key that exists but cannot
//! be read (never called "missing", never answered with advice to create one), a
//! single bastion started on the database of live replicas, a PostgreSQL
//! database that was never created, and `dev` on a machine whose 6443 is taken.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use postern_tests::{Bastion, bin, eventually, free_port, http};

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `serve` with a timeout: a start that is wrongly accepted would otherwise run
/// for ever.
fn serve(args: &[&str], as_user: Option<&str>) -> Output {
    let mut c = match as_user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(bin("postern-bastion"));
            c
        }
        None => Command::new(bin("postern-bastion")),
    };
    c.arg("serve")
        .args(["--api-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--agent-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ssh-addr", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let out = child.wait_with_output().unwrap();
    drop(killer);
    out
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[test]
fn a_master_key_that_cannot_be_read_is_never_called_missing() {
    if !is_root() {
        eprintln!("skipped: needs root to run the bastion as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // As the package lays it out: /etc/postern is 0700 root, the key 0600 root.
    let etc = dir.path().join("etc-postern");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(&etc, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let key = etc.join("master.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(
        Command::new("chown")
            .arg("nobody")
            .arg(&data)
            .status()
            .unwrap()
            .success()
    );
    let before = std::fs::read(&key).unwrap();
    let out = serve(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
        ],
        Some("nobody"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the master key file"), "{err}");
    assert!(err.contains("do not create a new one"), "{err}");
    assert!(
        err.contains("mode 0700"),
        "names the directory that hides it: {err}"
    );
    assert!(!err.contains("create it once"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key is untouched");

    // A key that really is missing gets the advice to create one.
    let out = serve(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--master-key-file",
            dir.path().join("none.key").to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist: on a new bastion create it once"),
        "{err}"
    );
}

/// A bastion without `--replica-name` would resume the replicas' executions and
/// take their nodes: refused while one is alive, with what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_bastion_is_refused_on_the_database_of_live_replicas() {
    let r1 = Bastion::start(Bastion::replica_opts("r1")).await;
    let url = r1.opts.database_url.clone().unwrap();
    let key = r1.dir.path().join("master.key");
    let data = tempfile::tempdir().unwrap();
    let out = serve(
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--database-url",
            &url,
            "--master-key-file",
            key.to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("replicas \"r1\" are running on this database"),
        "{err}"
    );
    assert!(err.contains("--replica-name"), "{err}");
    // Said once, not repeated down a chain of causes.
    assert_eq!(
        err.matches("are running on this database").count(),
        1,
        "{err}"
    );
}

#[test]
fn a_database_that_was_never_created_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::env::var("POSTERN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (head, _) = base.rsplit_once('/').unwrap();
    let url = format!("{head}/postern_never_created_{}", std::process::id());
    let out = Command::new(bin("postern-bastion"))
        .args(["init", "--data-dir"])
        .arg(dir.path())
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist: create it once"), "{err}");
    assert!(err.contains("createdb"), "{err}");
}

/// Every k3s host holds 127.0.0.1:6443: `dev` still starts, without the
/// Kubernetes door, and says which flag brings it back.
#[tokio::test(flavor = "multi_thread")]
async fn dev_starts_when_6443_is_taken_and_says_which_flag_to_use() {
    // When something else holds it already, that is the case under test too.
    let held = std::net::TcpListener::bind("127.0.0.1:6443").ok();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("postern-dev");
    let api = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("dev.log");
    let mut dev = Command::new(bin("postern-bastion"))
        .args(["dev", "--data-dir"])
        .arg(&data)
        .args(["--api-addr", &api])
        .args(["--agent-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ssh-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = api.parse().unwrap();
    eventually(Duration::from_secs(60), "dev is up", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Postern dev bastion is up")
    })
    .await;
    let (status, _) = http(addr, "GET", "/readyz", None, None).await.unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status();
    let _ = dev.wait();
    drop(held);
    assert_eq!(status, 200, "{said}");
    assert!(
        said.contains("Kubernetes: off: 127.0.0.1:6443 is taken"),
        "{said}"
    );
    assert!(said.contains("--kube-addr"), "{said}");
}
