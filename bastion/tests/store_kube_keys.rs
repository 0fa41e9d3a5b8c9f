//! The node's keys from Kubernetes in the store, on SQLite and PostgreSQL: replaced
//! only when they differ, with the previous set handed back for the audit.
#![allow(clippy::unwrap_used)]

mod common;

use postern_bastion::store::{KubeKeysChange, Store, StoreError};

async fn kube_keys_change_only_when_different(s: &Store) {
    let org = s.create_org("acme", 1).await.unwrap();
    let p = s.create_project(&org.id, "web", 2).await.unwrap();
    let e = s.create_edge(&p.id, "eu-1", 3).await.unwrap();
    s.insert_enrollment_token(&common::token_row("tok", &e.id, 5, 1_000))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n1", "tok", &e.id, "a"), 10)
        .await
        .unwrap();
    let n = s.node("n1").await.unwrap().unwrap();
    assert_eq!((n.kube_keys, n.kube_keys_at), (None, None));

    let first = r#"{"keys":[],"rejected":[]}"#;
    assert_eq!(
        s.set_node_kube_keys("n1", Some(first), 20).await.unwrap(),
        KubeKeysChange::Changed { previous: None }
    );
    // The same set again (a restart, another replica): nothing written.
    assert_eq!(
        s.set_node_kube_keys("n1", Some(first), 30).await.unwrap(),
        KubeKeysChange::Unchanged
    );
    let n = s.node("n1").await.unwrap().unwrap();
    assert_eq!(
        (n.kube_keys.as_deref(), n.kube_keys_at),
        (Some(first), Some(20))
    );

    let second = r#"{"keys":[],"rejected":[{"line":1,"reason":"x"}]}"#;
    assert_eq!(
        s.set_node_kube_keys("n1", Some(second), 40).await.unwrap(),
        KubeKeysChange::Changed {
            previous: Some(first.to_string())
        }
    );
    let listed = s.list_nodes(&e.id).await.unwrap();
    assert_eq!(listed[0].kube_keys.as_deref(), Some(second));
    assert_eq!(listed[0].kube_keys_at, Some(40));
    // The agent stopped reading Kubernetes: cleared, once.
    assert_eq!(
        s.set_node_kube_keys("n1", None, 45).await.unwrap(),
        KubeKeysChange::Changed {
            previous: Some(second.to_string())
        }
    );
    assert_eq!(
        s.set_node_kube_keys("n1", None, 46).await.unwrap(),
        KubeKeysChange::Unchanged
    );
    assert_eq!(s.node("n1").await.unwrap().unwrap().kube_keys, None);
    assert!(matches!(
        s.set_node_kube_keys("missing", Some(first), 50).await,
        Err(StoreError::NotFound(_))
    ));
}

both_backends!(kube_keys_change_only_when_different);
