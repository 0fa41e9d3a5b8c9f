//! The module's tests, apart from it.

#![allow(clippy::unwrap_used)]
use postern_api::kube_keys::parse_annotation;
use postern_api::kube_keys::signed::SignedDoc;

use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t a";
/// The cluster admin's key; signatures themselves are tested in
/// `postern_api::kube_keys::signed`, so here documents arrive already checked.
const SIGNER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxFQIxdYoqipACxlRQNotxR29dE4Ktqc45c9Vthw5ue admin";
const OTHER_SIGNER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t other";

fn signers(line: &str) -> Signers {
    Signers::parse(line).unwrap()
}

/// What `signed::evaluate` gives for a valid document with these key lines.
fn accepted(serial: u64, lines: &str) -> Outcome {
    Outcome {
        parsed: parse_annotation(lines),
        accepted: Some(SignedDoc {
            signer: signers(SIGNER).fingerprints().next().unwrap().to_string(),
            serial,
            not_after_ms: i64::MAX,
            sha256: format!("{serial:064x}"),
        }),
    }
}

#[tokio::test]
async fn changes_move_the_version_persist_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = signers(SIGNER);
    let keys = KubeKeys::open(Some(dir.path()), "n1", &s);
    let v0 = keys.report().version;
    assert!(
        keys.apply(accepted(1, &format!("logins=root {KEY}\nbad line")))
            .await
            .unwrap()
    );
    // The same annotation again changes nothing.
    assert!(
        !keys
            .apply(accepted(1, &format!("logins=root {KEY}\nbad line")))
            .await
            .unwrap()
    );
    let r = keys.report();
    assert_eq!(r.version, v0 + 1);
    assert_eq!(r.keys.len(), 1);
    assert_eq!(r.rejected[0].line, 2);
    assert_eq!(keys.for_login("root", None).len(), 1);
    assert!(keys.for_login("deploy", None).is_empty());
    let meta = std::fs::metadata(dir.path().join(files::KUBE_KEYS)).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // A restart serves the cache; another Node's cache is not used.
    assert_eq!(
        KubeKeys::open(Some(dir.path()), "n1", &s)
            .for_login("root", None)
            .len(),
        1
    );
    assert!(
        KubeKeys::open(Some(dir.path()), "n2", &s)
            .for_login("root", None)
            .is_empty()
    );
    // Turned off, the cache goes.
    KubeKeys::disabled(Some(dir.path()));
    assert!(!dir.path().join(files::KUBE_KEYS).exists());
}

#[tokio::test]
async fn expired_keys_are_never_held_and_a_waiter_wakes_on_change() {
    let keys = KubeKeys::open(None, "n1", &signers(SIGNER));
    keys.apply(accepted(1, &format!("expires=2001-01-01T00:00:00Z {KEY}")))
        .await
        .unwrap();
    assert!(keys.for_login("root", None).is_empty());
    assert!(keys.report().keys.is_empty());
    let v = keys.report().version;
    let stop = CancellationToken::new();
    let waiter = {
        let keys = keys.clone();
        let stop = stop.clone();
        tokio::spawn(async move { keys.wait_changed(v, Duration::from_secs(30), &stop).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    keys.apply(accepted(2, KEY)).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.version, v + 1);
    assert_eq!(r.keys.len(), 1);
    // An old version answers at once.
    let r = keys.wait_changed(0, Duration::from_secs(30), &stop).await;
    assert_eq!(r.version, v + 1);
}

/// What a writer of `nodes/status` can do to a node with keys: replace the
/// annotation, unsigned. The keys go at once (not kept from the cache), the
/// reason is reported, and the serial already accepted stays the floor.
#[tokio::test]
async fn an_unsigned_annotation_takes_the_keys_away_and_keeps_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let s = signers(SIGNER);
    let keys = KubeKeys::open(Some(dir.path()), "n1", &s);
    keys.apply(accepted(5, KEY)).await.unwrap();
    assert_eq!(keys.for_login("root", None).len(), 1);
    assert!(
        keys.observe(Some(format!("logins=root {KEY}").as_str()), None, &s)
            .await
            .unwrap()
    );
    assert!(keys.for_login("root", None).is_empty());
    let r = keys.report();
    assert!(r.keys.is_empty());
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].line, 0);
    assert!(r.rejected[0].reason.contains(SIG_ANNOTATION), "{r:?}");
    let cached: KubeKeysFile =
        serde_json::from_slice(&std::fs::read(dir.path().join(files::KUBE_KEYS)).unwrap()).unwrap();
    assert!(cached.keys.is_empty());
    assert_eq!(cached.signed.map(|d| d.serial), Some(5));
    // Both annotations gone: nothing, and nothing to report.
    keys.observe(None, None, &s).await.unwrap();
    let r = keys.report();
    assert!(r.keys.is_empty() && r.rejected.is_empty(), "{r:?}");
}

#[tokio::test]
async fn a_cache_nobody_configured_vouches_for_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KubeKeys::open(Some(dir.path()), "n1", &signers(SIGNER));
    keys.apply(accepted(3, KEY)).await.unwrap();
    // The signer was taken out of --kube-node-keys-signer: the keys go, also
    // from the file the keys helper reads; the serial stays.
    let reopened = KubeKeys::open(Some(dir.path()), "n1", &signers(OTHER_SIGNER));
    assert!(reopened.for_login("root", None).is_empty());
    let cached: KubeKeysFile =
        serde_json::from_slice(&std::fs::read(dir.path().join(files::KUBE_KEYS)).unwrap()).unwrap();
    assert!(cached.keys.is_empty());
    assert_eq!(cached.signed.map(|d| d.serial), Some(3));
    // A cache written before signatures were required (no `signed`).
    let old = KubeKeysFile {
        node_name: "n1".into(),
        keys: parse_annotation(KEY).keys,
        ..KubeKeysFile::default()
    };
    std::fs::write(
        dir.path().join(files::KUBE_KEYS),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    let reopened = KubeKeys::open(Some(dir.path()), "n1", &signers(SIGNER));
    assert!(reopened.for_login("root", None).is_empty());
}
