//! Per-org recording retention on both stores: what is past its org's
//! retention is deleted and audited once; what is newer, still live, or in an
//! org that keeps its recordings stays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use postern_api::admin::AuditFilter;
use postern_bastion::recording::retention::sweep;
use postern_bastion::store::{OrgPolicy, RecordingRow, Store};

const DAY: i64 = 86_400_000;

fn row(id: &str, org: &str, started_at: i64) -> RecordingRow {
    RecordingRow {
        id: id.into(),
        org_id: org.into(),
        project_id: "p".into(),
        node_id: "n".into(),
        hostname: "web-1".into(),
        user_id: "u".into(),
        user_name: "alice".into(),
        login: "root".into(),
        kind: "shell".into(),
        command: String::new(),
        policy: "best_effort".into(),
        replica: "local".into(),
        width: 80,
        height: 24,
        started_at,
        ended_at: None,
        status: "live".into(),
        chunks: 0,
        cast_bytes: 0,
        stored_bytes: 0,
        gaps: 0,
        last_hash: "h".into(),
        pod: None,
    }
}

async fn retention_applies(store: Store) {
    let now = 1_800_000_000_000;
    let keeps = store.create_org("keeps", 1).await.unwrap();
    let forgets = store.create_org("forgets", 1).await.unwrap();
    store
        .set_recording_retention(&forgets.id, 30, 1)
        .await
        .unwrap();
    // An org policy set afterwards keeps the retention.
    let policy = OrgPolicy {
        require_mfa: true,
        ..OrgPolicy::default()
    };
    store.set_org_policy(&forgets.id, &policy, 2).await.unwrap();
    let p = store.org_policy(&forgets.id).await.unwrap();
    assert_eq!((p.require_mfa, p.recording_retention_days), (true, 30));
    let shared = common::shared(store.clone()).await;
    // (id, org, started, ended): ended 31 days ago goes; the rest stays.
    let cases: [(&str, &str, i64, Option<i64>); 5] = [
        ("old", &forgets.id, now - 32 * DAY, Some(now - 31 * DAY)),
        ("recent", &forgets.id, now - 2 * DAY, Some(now - DAY)),
        (
            "boundary",
            &forgets.id,
            now - 31 * DAY,
            Some(now - 30 * DAY + 1),
        ),
        ("still-live", &forgets.id, now - 40 * DAY, None),
        ("kept", &keeps.id, now - 400 * DAY, Some(now - 399 * DAY)),
    ];
    for (id, org, started, ended) in cases {
        store
            .create_recording(&row(id, org, started))
            .await
            .unwrap();
        if let Some(t) = ended {
            store.finish_recording(id, t, "ended", None).await.unwrap();
        }
    }
    assert_eq!(sweep(&store, &shared.audit, now).await.unwrap(), 1);
    for (id, _, _, _) in cases {
        assert_eq!(
            store.recording(id).await.unwrap().is_some(),
            id != "old",
            "{id}"
        );
    }
    // Nothing left to do: a second sweep (or another replica's) deletes and
    // audits nothing more.
    assert_eq!(sweep(&store, &shared.audit, now).await.unwrap(), 0);
    let f = AuditFilter {
        action: Some("recording.expired".into()),
        ..AuditFilter::default()
    };
    let (n, entries) = shared
        .audit
        .log()
        .page_filtered(Some(&forgets.id), &f, 10, 0)
        .await
        .unwrap();
    assert_eq!(n, 1, "{entries:?}");
    assert_eq!(entries[0].targets[0], "recording:old");
    assert_eq!(entries[0].detail["last_hash"], "h");
    let (n, _) = shared
        .audit
        .log()
        .page_filtered(Some(&keeps.id), &f, 10, 0)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn retention_deletes_what_is_past_it_once_sqlite() {
    let t = common::sqlite().await;
    retention_applies(t.store.clone()).await;
    t.cleanup().await;
}

#[tokio::test]
async fn retention_deletes_what_is_past_it_once_postgres() {
    let t = common::postgres().await;
    retention_applies(t.store.clone()).await;
    t.cleanup().await;
}
