//! Store tests, each on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use postern_api::admin::{NodeState, Role};
use postern_bastion::audit::{Audit, ChainBreak, Event};
use postern_bastion::store::{
    ApiTokenRow, Approval, BindingRow, EnrollOutcome, KubeGatewayRow, LabelReport, NewNode,
    NewSshKey, Store, StoreError,
};

async fn tenancy(s: &Store) -> (String, String, String) {
    let org = s.create_org("acme", 1).await.unwrap();
    let p = s.create_project(&org.id, "web", 2).await.unwrap();
    let e = s.create_edge(&p.id, "eu-1", 3).await.unwrap();
    (org.id, p.id, e.id)
}

async fn names_are_unique_per_scope(s: &Store) {
    let (org, project, _) = tenancy(s).await;
    assert!(matches!(
        s.create_project(&org, "web", 5).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_edge(&project, "eu-1", 5).await,
        Err(StoreError::Conflict(_))
    ));
    let other = s.create_org("other", 1).await.unwrap();
    s.create_project(&other.id, "web", 5).await.unwrap();
    assert_eq!(s.list_projects(&org).await.unwrap().len(), 1);
    assert!(s.project_by_name(&org, "nope").await.unwrap().is_none());
}

async fn role_bindings_round_trip(s: &Store) {
    let (org, project, _) = tenancy(s).await;
    let u = s.create_user(&org, "alice", 1).await.unwrap();
    s.set_binding(
        &u.id,
        &BindingRow {
            project_id: Some(project.clone()),
            role: Role::ProjectMember,
            logins: vec!["deploy".into(), "www".into()],
            forward_to: vec![],
            kube_groups: None,
        },
        2,
    )
    .await
    .unwrap();
    // Setting the same scope again replaces, never duplicates.
    s.set_binding(
        &u.id,
        &BindingRow {
            project_id: Some(project.clone()),
            role: Role::ReadOnly,
            logins: vec![],
            forward_to: vec![],
            kube_groups: None,
        },
        3,
    )
    .await
    .unwrap();
    s.set_binding(
        &u.id,
        &BindingRow {
            project_id: None,
            role: Role::OrgAdmin,
            logins: vec![],
            forward_to: vec![],
            kube_groups: None,
        },
        3,
    )
    .await
    .unwrap();
    let b = s.bindings(&u.id).await.unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].project_id, None);
    assert_eq!(b[1].role, Role::ReadOnly);
    assert!(s.remove_binding(&u.id, Some(&project)).await.unwrap());
    assert!(!s.remove_binding(&u.id, Some(&project)).await.unwrap());
    assert_eq!(s.bindings(&u.id).await.unwrap().len(), 1);
}

async fn api_tokens_revoke(s: &Store) {
    let (org, _, _) = tenancy(s).await;
    let u = s.create_user(&org, "bob", 1).await.unwrap();
    let row = ApiTokenRow {
        id: "t1".into(),
        user_id: u.id.clone(),
        secret_hash: "abc".into(),
        name: Some("ci".into()),
        created_at: 1,
        expires_at: 1000,
        revoked_at: None,
    };
    s.insert_api_token(&row).await.unwrap();
    assert_eq!(s.api_token("t1").await.unwrap().unwrap(), row);
    s.revoke_api_token("t1", 5).await.unwrap();
    s.revoke_api_token("t1", 9).await.unwrap();
    assert_eq!(
        s.api_token("t1").await.unwrap().unwrap().revoked_at,
        Some(5)
    );
    assert!(matches!(
        s.revoke_api_token("nope", 5).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.list_api_tokens(&u.id).await.unwrap().len(), 1);
}

async fn enrollment_consumes_uses_atomically(s: &Store) {
    let (_, _, edge) = tenancy(s).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 2, 1_000))
        .await
        .unwrap();
    let first = s
        .enroll_node(&common::new_node("n1", "tok", &edge, "a"), 10)
        .await
        .unwrap();
    assert!(matches!(first, EnrollOutcome::Enrolled(ref n) if n.state == NodeState::Pending));
    // A taken hostname is refused and does not use up the token.
    let dup = s
        .enroll_node(&common::new_node("n2", "tok", &edge, "a"), 10)
        .await
        .unwrap();
    assert_eq!(dup, EnrollOutcome::HostnameTaken);
    assert_eq!(s.enrollment_token("tok").await.unwrap().unwrap().uses, 1);
    s.enroll_node(&common::new_node("n3", "tok", &edge, "b"), 10)
        .await
        .unwrap();
    let used_up = s
        .enroll_node(&common::new_node("n4", "tok", &edge, "c"), 10)
        .await
        .unwrap();
    assert_eq!(used_up, EnrollOutcome::TokenExhausted);
    assert!(s.node("n4").await.unwrap().is_none());
    assert_eq!(s.list_nodes(&edge).await.unwrap().len(), 2);
}

async fn nodes_are_paged_and_searched_in_the_store(s: &Store) {
    let (_, _, edge) = tenancy(s).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 100, 1_000))
        .await
        .unwrap();
    for (i, h) in ["web-1", "web-2", "web-10", "db-1", "a_b", "a%b"]
        .iter()
        .enumerate()
    {
        s.enroll_node(&common::new_node(&format!("n{i}"), "tok", &edge, h), 10)
            .await
            .unwrap();
    }
    let names = |rows: &[postern_bastion::store::NodeRow]| {
        rows.iter().map(|r| r.hostname.clone()).collect::<Vec<_>>()
    };
    let (total, rows) = s.page_nodes(&edge, "", 2, 0).await.unwrap();
    assert_eq!(
        (total, names(&rows)),
        (6, vec!["a%b".to_string(), "a_b".into()])
    );
    let (total, rows) = s.page_nodes(&edge, "WEB", 2, 1).await.unwrap();
    assert_eq!(
        (total, names(&rows)),
        (3, vec!["web-10".to_string(), "web-2".into()])
    );
    // Wildcards in the search are plain characters.
    let (total, rows) = s.page_nodes(&edge, "_", 10, 0).await.unwrap();
    assert_eq!((total, names(&rows)), (1, vec!["a_b".to_string()]));
    let (total, _) = s.page_nodes(&edge, "%", 10, 0).await.unwrap();
    assert_eq!(total, 1);
    let (total, rows) = s.page_nodes(&edge, "", 10, i64::MAX / 2).await.unwrap();
    assert_eq!((total, rows.len()), (6, 0));
}

async fn expired_and_revoked_tokens_enroll_nothing(s: &Store) {
    let (_, _, edge) = tenancy(s).await;
    s.insert_enrollment_token(&common::token_row("old", &edge, 5, 100))
        .await
        .unwrap();
    let r = s
        .enroll_node(&common::new_node("n1", "old", &edge, "a"), 100)
        .await
        .unwrap();
    assert_eq!(r, EnrollOutcome::TokenExhausted);
    s.insert_enrollment_token(&common::token_row("rev", &edge, 5, 1_000))
        .await
        .unwrap();
    s.revoke_enrollment_token("rev", 1).await.unwrap();
    let r = s
        .enroll_node(&common::new_node("n2", "rev", &edge, "b"), 10)
        .await
        .unwrap();
    assert_eq!(r, EnrollOutcome::TokenExhausted);
    assert!(s.list_nodes(&edge).await.unwrap().is_empty());
}

async fn node_lifecycle(s: &Store) {
    let (_, _, edge) = tenancy(s).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, 1_000))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n1", "tok", &edge, "a"), 10)
        .await
        .unwrap();
    assert!(
        !s.mark_provisioned("n1").await.unwrap(),
        "pending nodes are not provisioned"
    );
    s.set_node_state("n1", NodeState::Approved, 11)
        .await
        .unwrap();
    assert!(s.mark_provisioned("n1").await.unwrap());
    let n = s.node("n1").await.unwrap().unwrap();
    assert_eq!((n.state, n.approved_at), (NodeState::Provisioned, Some(11)));
    s.touch_nodes(&["n1".to_string(), "missing".to_string()], 50)
        .await
        .unwrap();
    s.record_cert("n1", "ff", 77).await.unwrap();
    let n = s.node_by_hostname(&edge, "a").await.unwrap().unwrap();
    assert_eq!(
        (n.last_seen_at, n.cert_serial.as_deref(), n.cert_expires_at),
        (Some(50), Some("ff"), Some(77))
    );
    s.delete_node("n1").await.unwrap();
    assert!(matches!(
        s.delete_node("n1").await,
        Err(StoreError::NotFound(_))
    ));
}

fn labels(pairs: &[(&str, &str)]) -> postern_api::labels::Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Reported labels become a node's only through an approval that names them
/// (or the first report under an auto-approving token), on both backends: the
/// statements compare labels as stored text.
async fn agent_labels_wait_for_an_approval_that_names_them(s: &Store) {
    let (_, _, edge) = tenancy(s).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, 1_000))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n1", "tok", &edge, "a"), 10)
        .await
        .unwrap();
    let web = labels(&[("role", "web")]);
    let db = labels(&[("role", "db"), ("zone", "a")]);
    let node = || async { s.node("n1").await.unwrap().unwrap() };

    assert_eq!(
        s.report_agent_labels("n1", &web).await.unwrap(),
        LabelReport::Held
    );
    assert_eq!(
        s.report_agent_labels("n1", &web).await.unwrap(),
        LabelReport::Unchanged
    );
    let n = node().await;
    assert_eq!(
        (n.agent_labels.len(), n.agent_labels_pending.as_ref()),
        (0, Some(&web))
    );

    // An approval naming other labels than reported changes nothing, the
    // state included.
    assert_eq!(
        s.approve_node(
            "n1",
            NodeState::Pending,
            Some(NodeState::Approved),
            Some(&db),
            11
        )
        .await
        .unwrap(),
        Approval::LabelsDiffer
    );
    assert_eq!(node().await.state, NodeState::Pending);
    // From a state the node is not in: nothing.
    assert_eq!(
        s.approve_node(
            "n1",
            NodeState::Approved,
            Some(NodeState::Provisioned),
            None,
            11
        )
        .await
        .unwrap(),
        Approval::Moved
    );
    assert_eq!(
        s.approve_node(
            "n1",
            NodeState::Pending,
            Some(NodeState::Approved),
            Some(&web),
            12
        )
        .await
        .unwrap(),
        Approval::Done
    );
    let n = node().await;
    assert_eq!(
        (
            n.state,
            n.approved_at,
            &n.agent_labels,
            n.agent_labels_pending
        ),
        (NodeState::Approved, Some(12), &web, None)
    );

    // Approved, enabled again, whatever: a change waits.
    s.set_node_state("n1", NodeState::Disabled, 13)
        .await
        .unwrap();
    s.set_node_state("n1", NodeState::Approved, 14)
        .await
        .unwrap();
    assert_eq!(
        s.report_agent_labels("n1", &db).await.unwrap(),
        LabelReport::Held
    );
    assert_eq!(node().await.agent_labels, web);
    // Naming the approved labels while a change waits is not approving it.
    assert_eq!(
        s.approve_node("n1", NodeState::Approved, None, Some(&web), 15)
            .await
            .unwrap(),
        Approval::LabelsDiffer
    );
    assert_eq!(
        s.report_agent_labels("n1", &web).await.unwrap(),
        LabelReport::Withdrawn
    );
    s.report_agent_labels("n1", &db).await.unwrap();
    assert_eq!(
        s.approve_node("n1", NodeState::Approved, None, Some(&db), 16)
            .await
            .unwrap(),
        Approval::Done
    );
    let n = node().await;
    assert_eq!((&n.agent_labels, n.agent_labels_pending), (&db, None));
    // Nothing waits: naming the approved labels is a no-op that succeeds.
    assert_eq!(
        s.approve_node("n1", NodeState::Approved, None, Some(&db), 17)
            .await
            .unwrap(),
        Approval::Done
    );

    // An auto-approved node: its first report is taken, the next held.
    let auto = NewNode {
        auto_approve: true,
        ..common::new_node("n2", "tok", &edge, "b")
    };
    s.enroll_node(&auto, 20).await.unwrap();
    assert_eq!(
        s.report_agent_labels("n2", &web).await.unwrap(),
        LabelReport::Taken
    );
    assert_eq!(
        s.report_agent_labels("n2", &db).await.unwrap(),
        LabelReport::Held
    );
    let n = s.node("n2").await.unwrap().unwrap();
    assert_eq!(
        (&n.agent_labels, n.agent_labels_pending.as_ref()),
        (&web, Some(&db))
    );
}

/// The Kubernetes gateway role is a grant: what an agent says (and what older
/// versions stored from it) lists no node; a granted node is listed while it is
/// approved, with whether its agent says it can serve.
async fn kube_gateways_are_granted_never_claimed(s: &Store) {
    let (_, _, edge) = tenancy(s).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, 1_000))
        .await
        .unwrap();
    for (id, host) in [("n1", "gw-1"), ("n2", "claims-1"), ("n3", "pending-1")] {
        s.enroll_node(&common::new_node(id, "tok", &edge, host), 10)
            .await
            .unwrap();
    }
    for id in ["n1", "n2"] {
        s.set_node_state(id, NodeState::Approved, 11).await.unwrap();
    }
    // Every agent claims it; a row as an older version left it claims it too.
    assert!(s.set_kube_gateway_capable("n1", true).await.unwrap());
    assert!(!s.set_kube_gateway_capable("n1", true).await.unwrap());
    assert!(s.set_kube_gateway_capable("n3", true).await.unwrap());
    sqlx::query("UPDATE nodes SET kube_gateway = 1 WHERE id = 'n2'")
        .execute(s.pool())
        .await
        .unwrap();
    assert!(s.kube_gateways(&edge).await.unwrap().is_empty());
    let n2 = s.node("n2").await.unwrap().unwrap();
    assert!(n2.kube_gateway_capable && !n2.kube_gateway_granted);

    // Granted: listed, once however often granted.
    assert!(s.set_kube_gateway_granted("n1", true).await.unwrap());
    assert!(!s.set_kube_gateway_granted("n1", true).await.unwrap());
    let gw = |capable| KubeGatewayRow {
        id: "n1".into(),
        hostname: "gw-1".into(),
        capable,
    };
    assert_eq!(s.kube_gateways(&edge).await.unwrap(), vec![gw(true)]);
    let n1 = s.node("n1").await.unwrap().unwrap();
    assert!(n1.kube_gateway_capable && n1.kube_gateway_granted);
    // Granted in the store while pending (the API refuses it): not listed.
    s.set_kube_gateway_granted("n3", true).await.unwrap();
    assert_eq!(s.kube_gateways(&edge).await.unwrap(), vec![gw(true)]);
    // The agent stops claiming it: still granted, listed as not capable.
    s.set_kube_gateway_capable("n1", false).await.unwrap();
    assert_eq!(s.kube_gateways(&edge).await.unwrap(), vec![gw(false)]);
    // Disabled: not listed; taken back: not listed once enabled again.
    s.set_kube_gateway_capable("n1", true).await.unwrap();
    s.set_node_state("n1", NodeState::Disabled, 12)
        .await
        .unwrap();
    assert!(s.kube_gateways(&edge).await.unwrap().is_empty());
    s.set_node_state("n1", NodeState::Approved, 13)
        .await
        .unwrap();
    assert_eq!(s.kube_gateways(&edge).await.unwrap(), vec![gw(true)]);
    assert!(s.set_kube_gateway_granted("n1", false).await.unwrap());
    assert!(s.kube_gateways(&edge).await.unwrap().is_empty());
}

async fn touch_many_nodes_in_batches(s: &Store) {
    let (_, _, edge) = tenancy(s).await;
    s.insert_enrollment_token(&common::token_row("tok", &edge, 2_000, 1_000))
        .await
        .unwrap();
    let ids: Vec<String> = (0..1_200).map(|i| format!("n{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let host = format!("h{i}");
        s.enroll_node(&common::new_node(id, "tok", &edge, &host), 10)
            .await
            .unwrap();
    }
    s.touch_nodes(&ids, 500).await.unwrap();
    let all = s.list_nodes(&edge).await.unwrap();
    assert_eq!(all.len(), 1_200);
    assert!(all.iter().all(|n| n.last_seen_at == Some(500)));
}

async fn ca_is_stored_once(s: &Store) {
    let first = s.insert_ca("cert1", "key1", 1).await.unwrap();
    let second = s.insert_ca("cert2", "key2", 2).await.unwrap();
    assert_eq!(first, ("cert1".to_string(), "key1".to_string()));
    assert_eq!(second, first, "a second CA must never replace the first");
}

async fn audit_batches_extend_one_chain(s: &Store) {
    let audit = Audit::new(s.clone());
    audit.record(Event::new("one", "ok")).await.unwrap();
    let batch: Vec<Event> = (0..300)
        .map(|i| Event::new("kube.request", "ok").actor(format!("u{i}")))
        .collect();
    assert_eq!(audit.record_many(batch).await.unwrap(), 301);
    audit.record(Event::new("after", "ok")).await.unwrap();
    assert_eq!(audit.record_many(Vec::new()).await.unwrap(), 0);
    assert_eq!(audit.verify().await.unwrap(), Ok(302));
}

/// The audit filters, on both backends: an action or a prefix of one, an
/// actor, an outcome and a time window, all together, counted in `total`.
async fn audit_filters_select_and_count(s: &Store) {
    use postern_api::admin::AuditQuery;
    let audit = Audit::new(s.clone());
    for (action, actor, outcome) in [
        ("cmdexec.execute", "ann", "ok"),
        ("cmdexec.cancel", "ann", "ok"),
        ("cmdexec_other", "ann", "ok"),
        ("cmdexec.execute", "bob", "denied"),
        ("api GET /api/v1/audit", "ann", "ok"),
    ] {
        audit
            .record(Event::new(action, outcome).org("o1").actor(actor))
            .await
            .unwrap();
    }
    audit
        .record(Event::new("cmdexec.execute", "ok").org("o2").actor("ann"))
        .await
        .unwrap();
    let q = |action: Option<&str>, actor: Option<&str>, outcome: Option<&str>| AuditQuery {
        action: action.map(str::to_string),
        actor: actor.map(str::to_string),
        outcome: outcome.map(str::to_string),
        ..AuditQuery::default()
    };
    let page = |q: AuditQuery| {
        let audit = audit.clone();
        async move {
            let f = q.filter().unwrap();
            let (total, entries) = audit.page_filtered(Some("o1"), &f, 100, 0).await.unwrap();
            assert_eq!(total as usize, entries.len());
            entries.into_iter().map(|e| e.action).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        page(q(Some("cmdexec.*"), None, None)).await,
        ["cmdexec.execute", "cmdexec.cancel", "cmdexec.execute"],
        "a prefix is a prefix (cmdexec_other is not under cmdexec.), newest first, one org"
    );
    assert_eq!(
        page(q(Some("cmdexec.execute"), Some("bob"), None)).await,
        ["cmdexec.execute"]
    );
    assert_eq!(
        page(q(None, Some("ann"), Some("denied"))).await,
        Vec::<String>::new()
    );
    assert_eq!(
        page(q(Some("%"), None, None)).await,
        Vec::<String>::new(),
        "no wildcards but *"
    );
    let future = AuditQuery {
        since: Some("2999-01-01T00:00:00Z".into()),
        ..AuditQuery::default()
    };
    assert!(page(future).await.is_empty());
    let past = AuditQuery {
        until: Some("2999-01-01T00:00:00Z".into()),
        since: Some("2000-01-01T00:00:00Z".into()),
        ..AuditQuery::default()
    };
    assert_eq!(page(past).await.len(), 5);
    for bad in [
        AuditQuery {
            since: Some("yesterday".into()),
            ..AuditQuery::default()
        },
        AuditQuery {
            action: Some("a*b*".into()),
            ..AuditQuery::default()
        },
        AuditQuery {
            actor: Some(String::new()),
            ..AuditQuery::default()
        },
        AuditQuery {
            outcome: Some("x".repeat(201)),
            ..AuditQuery::default()
        },
        AuditQuery {
            since: Some("2026-01-02T00:00:00Z".into()),
            until: Some("2026-01-01T00:00:00Z".into()),
            ..AuditQuery::default()
        },
    ] {
        assert!(bad.filter().is_err(), "{bad:?}");
    }
}

async fn audit_chain_detects_edit_and_removal(s: &Store) {
    let audit = Audit::new(s.clone());
    for i in 0..5 {
        audit
            .record(
                Event::new("test", "ok")
                    .org("o1")
                    .actor(format!("u{i}"))
                    .target("n"),
            )
            .await
            .unwrap();
    }
    assert_eq!(audit.verify().await.unwrap(), Ok(5));
    let (total, page) = audit.page(Some("o1"), 2, 1).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 3],
        "newest first"
    );

    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        audit.verify().await.unwrap(),
        Err(ChainBreak::Edited { seq: 3 })
    );
    sqlx::query("UPDATE audit_log SET actor = 'u2' WHERE seq = 3")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(audit.verify().await.unwrap(), Ok(5));

    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        audit.verify().await.unwrap(),
        Err(ChainBreak::Gap {
            expected: 2,
            found: 3
        })
    );
}

async fn audit_survives_a_second_writer(s: &Store) {
    // Two appenders over one database (two replicas): the chain stays one chain.
    let a = Audit::new(s.clone());
    let b = Audit::new(s.clone());
    for i in 0..6 {
        let w = if i % 2 == 0 { &a } else { &b };
        w.record(Event::new("x", "ok")).await.unwrap();
    }
    assert_eq!(a.verify().await.unwrap(), Ok(6));
}

/// Whatever a peer puts in an event (a 256 KiB SSH user name with NUL and escape
/// bytes, a huge detail string), the entry is written, bounded, and verifies.
async fn audit_entries_are_bounded_whatever_a_peer_sends(s: &Store) {
    let a = Audit::new(s.clone());
    let huge = format!(
        "{}\0\x1b[2J{}",
        "u".repeat(128 * 1024),
        "v".repeat(128 * 1024)
    );
    a.record(
        Event::new("ssh.auth", "denied")
            .actor(huge.clone())
            .source(Some(huge.clone()))
            .target(huge.clone())
            .detail(serde_json::json!({ "path": huge, "nested": [{ "x": "y".repeat(100_000) }] })),
    )
    .await
    .unwrap();
    let (_, entries) = a.page(None, 10, 0).await.unwrap();
    let e = &entries[0];
    let actor = e.actor.as_deref().unwrap();
    assert!(actor.len() <= 256 && !actor.contains('\0') && !actor.contains('\x1b'));
    assert!(e.source_ip.as_deref().unwrap().len() <= 256);
    assert!(e.targets[0].len() <= 256);
    let detail = serde_json::to_string(&e.detail).unwrap();
    assert!(detail.len() < 20_000, "{} bytes of detail", detail.len());
    assert_eq!(a.verify().await.unwrap(), Ok(1));
}

async fn ssh_keys_are_unique_per_user_bounded_and_found_for_their_user(s: &Store) {
    let (org, _, edge) = tenancy(s).await;
    let alice = s.create_user(&org, "alice", 1).await.unwrap();
    let bob = s.create_user(&org, "bob", 1).await.unwrap();
    let key = |user: &'static str, fp: &'static str| NewSshKey {
        user_id: if user == "alice" { &alice.id } else { &bob.id },
        fingerprint: fp,
        algorithm: "ssh-ed25519",
        public_key: "ssh-ed25519 AAAA",
        comment: "c",
    };
    let k1 = s
        .add_ssh_key(&key("alice", "SHA256:a"), 2, 5)
        .await
        .unwrap();
    // Registering proves no possession: anyone may register any public key, so a
    // key held by another user must not block this one (it only ever
    // authenticates each of them as themselves).
    let bob_a = s.add_ssh_key(&key("bob", "SHA256:a"), 2, 5).await.unwrap();
    assert!(matches!(
        s.add_ssh_key(&key("alice", "SHA256:a"), 2, 5).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.user_ssh_key(&bob.id, "SHA256:a").await.unwrap(),
        Some(bob_a)
    );
    s.add_ssh_key(&key("alice", "SHA256:b"), 2, 5)
        .await
        .unwrap();
    assert!(matches!(
        s.add_ssh_key(&key("alice", "SHA256:c"), 2, 5).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.list_ssh_keys(&alice.id).await.unwrap().len(), 2);
    let found = s
        .user_ssh_key(&alice.id, "SHA256:a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, k1);
    assert!(
        s.delete_ssh_key(&bob.id, &k1.id).await.unwrap().is_none(),
        "only the owner's key"
    );
    assert_eq!(
        s.delete_ssh_key(&alice.id, &k1.id).await.unwrap(),
        Some(k1.fingerprint.clone())
    );
    assert!(
        s.user_ssh_key(&alice.id, "SHA256:a")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.user_ssh_key(&bob.id, "SHA256:a").await.unwrap().is_some(),
        "bob's copy stays"
    );
    // A deleted user's keys go with them.
    s.delete_user(&alice.id).await.unwrap();
    assert!(
        s.user_ssh_key(&alice.id, "SHA256:b")
            .await
            .unwrap()
            .is_none()
    );

    // Nodes by hostname, within the org only.
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, 1_000))
        .await
        .unwrap();
    s.enroll_node(&common::new_node("n1", "tok", &edge, "db-1"), 10)
        .await
        .unwrap();
    let places = s.nodes_named(&org, "db-1").await.unwrap();
    assert_eq!(places.len(), 1);
    assert_eq!(
        (
            places[0].edge_name.as_str(),
            places[0].project_name.as_str()
        ),
        ("eu-1", "web")
    );
    assert!(s.nodes_named("other-org", "db-1").await.unwrap().is_empty());
}

/// Writers that race (two admins, or the API and the agent channel) each either
/// succeed or get a clear refusal; none fails because the database was busy, and a
/// limit checked inside a transaction holds under concurrency.
async fn racing_writers_wait_their_turn_and_limits_hold(s: &Store) {
    const USERS: usize = 4;
    const TRIES: usize = 6;
    const LIMIT: usize = 3;
    let (org, project, edge) = tenancy(s).await;
    let mut users = Vec::new();
    for u in 0..USERS {
        users.push(s.create_user(&org, &format!("u{u}"), 1).await.unwrap().id);
    }
    let fps: Vec<Vec<String>> = (0..USERS)
        .map(|u| (0..TRIES).map(|t| format!("SHA256:{u}-{t}")).collect())
        .collect();
    let mut adds = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for fp in &fps[u] {
            adds.push(async move {
                let k = NewSshKey {
                    user_id: user,
                    fingerprint: fp,
                    algorithm: "ssh-ed25519",
                    public_key: "ssh-ed25519 AAAA",
                    comment: "c",
                };
                s.add_ssh_key(&k, LIMIT, 5).await
            });
        }
    }
    s.insert_enrollment_token(&common::token_row("tok", &edge, 5, 1_000))
        .await
        .unwrap();
    let hosts: Vec<(String, String)> = (0..10)
        .map(|i| (format!("n{i}"), format!("h{i}")))
        .collect();
    let enrolls = hosts.iter().map(|(id, host)| {
        let edge = &edge;
        async move {
            s.enroll_node(&common::new_node(id, "tok", edge, host), 10)
                .await
        }
    });
    let bindings = users.iter().map(|u| {
        let b = BindingRow {
            role: Role::ProjectMember,
            project_id: Some(project.clone()),
            logins: vec!["root".into()],
            forward_to: vec![],
            kube_groups: None,
        };
        async move { s.set_binding(u, &b, 7).await }
    });
    let (added, enrolled, bound) = tokio::join!(
        futures_util::future::join_all(adds),
        futures_util::future::join_all(enrolls),
        futures_util::future::join_all(bindings),
    );
    for r in &added {
        assert!(
            matches!(r, Ok(_) | Err(StoreError::Conflict(_))),
            "a racing key add failed: {r:?}"
        );
    }
    for u in &users {
        assert_eq!(
            s.list_ssh_keys(u).await.unwrap().len(),
            LIMIT,
            "the per-user limit"
        );
    }
    let enrolled: Vec<EnrollOutcome> = enrolled.into_iter().map(|r| r.unwrap()).collect();
    let won = enrolled
        .iter()
        .filter(|o| matches!(o, EnrollOutcome::Enrolled(_)))
        .count();
    assert_eq!(won, 5, "a five-use token enrolls five of ten racing nodes");
    assert_eq!(s.enrollment_token("tok").await.unwrap().unwrap().uses, 5);
    for r in bound {
        r.unwrap();
    }
}

both_backends!(
    racing_writers_wait_their_turn_and_limits_hold,
    ssh_keys_are_unique_per_user_bounded_and_found_for_their_user,
    names_are_unique_per_scope,
    role_bindings_round_trip,
    api_tokens_revoke,
    enrollment_consumes_uses_atomically,
    nodes_are_paged_and_searched_in_the_store,
    expired_and_revoked_tokens_enroll_nothing,
    node_lifecycle,
    kube_gateways_are_granted_never_claimed,
    agent_labels_wait_for_an_approval_that_names_them,
    touch_many_nodes_in_batches,
    ca_is_stored_once,
    audit_chain_detects_edit_and_removal,
    audit_filters_select_and_count,
    audit_batches_extend_one_chain,
    audit_survives_a_second_writer,
    audit_entries_are_bounded_whatever_a_peer_sends,
);

mod executions {
    use postern_api::cmdexec::NodeExecStatus;
    use postern_bastion::store::{ExecutionRow, ResultRow, ResultUpdate, Store};

    pub(super) fn exec(id: &str, project: &str, edge: &str, at: i64) -> ExecutionRow {
        ExecutionRow {
            id: id.into(),
            org_id: "o".into(),
            project_id: project.into(),
            project_name: "web".into(),
            edge_id: edge.into(),
            edge_name: "eu-1".into(),
            username: "admin".into(),
            source_ip: Some("127.0.0.1".into()),
            command: "hostname".into(),
            content_type: "string".into(),
            target_type: "node".into(),
            target: Some(vec!["a".into()]),
            timeout_secs: 60,
            created_at: at,
            finished_at: None,
            max_concurrency: None,
            max_errors: None,
            selector: None,
            cancel_requested_at: None,
        }
    }

    pub async fn results_are_stored_once_and_paged(s: &Store) {
        let (_, project, edge) = super::tenancy(s).await;
        // 150 nodes: more than one multi-row insert chunk.
        let rows: Vec<ResultRow> = (0..150)
            .map(|i| {
                ResultRow::new(
                    "e1",
                    &format!("n{i:03}"),
                    &format!("h{i:03}"),
                    NodeExecStatus::Pending,
                )
            })
            .collect();
        s.insert_execution(&exec("e1", &project, &edge, 10), &rows)
            .await
            .unwrap();
        s.insert_execution(&exec("e2", &project, &edge, 20), &[])
            .await
            .unwrap();
        assert_eq!(s.unfinished_results().await.unwrap().len(), 150);

        let mut done = ResultRow::new("e1", "n000", "h000", NodeExecStatus::Failed);
        done.exit_code = Some(3);
        done.stdout = "out".into();
        done.stdout_bytes = 3;
        done.stdout_sha256 = Some("ab".into());
        done.stderr_truncated = true;
        done.finished_at = Some(99);
        let mut again = done.clone();
        again.exit_code = Some(0);
        again.status = NodeExecStatus::Succeeded;
        s.apply_result_updates(&[
            ResultUpdate::Started {
                exec_id: "e1".into(),
                node_id: "n000".into(),
                hostname: "h000".into(),
                at: 50,
            },
            ResultUpdate::Finished(Box::new(done.clone())),
            // Delivered twice: the first final result stands.
            ResultUpdate::Finished(Box::new(again)),
            ResultUpdate::Started {
                exec_id: "e1".into(),
                node_id: "n001".into(),
                hostname: "h001".into(),
                at: 60,
            },
        ])
        .await
        .unwrap();
        let page = s
            .execution_page("e1", 1000, 0, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        let (e, results) = (page.execution, page.results);
        assert_eq!(e.target, Some(vec!["a".to_string()]));
        assert_eq!(
            (page.counts.failed, page.counts.running, page.counts.pending),
            (1, 1, 148)
        );
        assert_eq!(page.next_offset, None);
        let first = &results[0];
        assert_eq!(
            (first.status, first.exit_code, first.started_at),
            (NodeExecStatus::Failed, Some(3), Some(50))
        );
        assert!(first.stderr_truncated && !first.stdout_truncated);
        assert_eq!(results[1].status, NodeExecStatus::Running);
        // The summary keeps sizes and hashes but not the output text.
        let (_, summary) = s.execution_summary("e1").await.unwrap().unwrap();
        assert_eq!(
            (summary[0].stdout.as_slice(), summary[0].stdout_bytes),
            (&b""[..], 3)
        );
        assert_eq!(summary[0].stdout_sha256.as_deref(), Some("ab"));
        assert_eq!(results[0].stdout, b"out");
        assert_eq!(s.unfinished_results().await.unwrap().len(), 149);

        let (total, page) = s.history(&project, 1, 0).await.unwrap();
        assert_eq!(
            (total, page[0].execution.id.as_str()),
            (2, "e2"),
            "newest first"
        );
        let (_, page) = s.history(&project, 5, 1).await.unwrap();
        assert_eq!(
            (page[0].execution.id.as_str(), page[0].counts.total()),
            ("e1", 150)
        );
        assert_eq!(
            (
                page[0].execution.command.as_str(),
                page[0].command_truncated
            ),
            ("hostname", false)
        );
        // History reads a long command cut short, by characters, in the database.
        let mut long = exec("e3", &project, &edge, 30);
        long.command = "é".repeat(5000);
        s.insert_execution(&long, &[]).await.unwrap();
        let (_, page) = s.history(&project, 1, 0).await.unwrap();
        assert_eq!(page[0].execution.command, "é".repeat(4096));
        assert!(page[0].command_truncated);
        // Not while any of its results is open: a finished execution is never
        // resumed, so they would stay open for good.
        assert!(!s.finish_execution("e1", 123).await.unwrap());
        assert_eq!(
            s.settled_unfinished_executions().await.unwrap(),
            ["e2", "e3"],
            "no result open (none at all, here), not finished"
        );
        let settle = |i: usize| {
            let mut r = ResultRow::new(
                "e1",
                &format!("n{i:03}"),
                &format!("h{i:03}"),
                NodeExecStatus::Succeeded,
            );
            r.finished_at = Some(100);
            ResultUpdate::Finished(Box::new(r))
        };
        // Every pending one settled; n001 still running.
        let rest: Vec<ResultUpdate> = (2..150).map(settle).collect();
        s.apply_result_updates(&rest).await.unwrap();
        assert!(!s.finish_execution("e1", 123).await.unwrap());
        assert_eq!(
            s.settled_unfinished_executions().await.unwrap(),
            ["e2", "e3"],
            "a running result is open too"
        );
        s.apply_result_updates(&[settle(1)]).await.unwrap();
        assert_eq!(
            s.settled_unfinished_executions().await.unwrap(),
            ["e1", "e2", "e3"]
        );
        assert!(s.finish_execution("e1", 123).await.unwrap());
        assert_eq!(
            s.settled_unfinished_executions().await.unwrap(),
            ["e2", "e3"]
        );
        let page = s
            .execution_page("e1", 10, 0, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.execution.finished_at, Some(123));

        // Pages of nodes, by hostname: a limit, an offset, and the next offset.
        assert_eq!(page.results.len(), 10);
        assert_eq!(page.next_offset, Some(10));
        let last = s
            .execution_page("e1", 100, 100, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last.results.len(), 50);
        assert_eq!(last.results[0].hostname, "h100");
        assert_eq!(last.next_offset, None);
        assert!(s.execution_page("nope", 10, 0, 1).await.unwrap().is_none());

        // Each change of state is one event, each node's in order (the batch
        // writes starts, output, then ends); the result delivered twice has
        // one. Finishing the execution ends its stream, once.
        let kinds = |evs: Vec<postern_bastion::store::StoredEvent>| {
            evs.into_iter().map(|e| e.kind).collect::<Vec<_>>()
        };
        let evs = s.events_after("e1", 0, 200).await.unwrap();
        let ids: Vec<i64> = evs.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(evs[0].body.contains("\"h000\""), "{}", evs[0].body);
        assert!(evs[2].body.contains("\"exit_code\":3"), "{}", evs[2].body);
        assert!(evs[2].body.contains("\"h000\""), "{}", evs[2].body);
        let kinds_all = kinds(evs);
        assert_eq!(
            kinds_all[..3],
            ["node_started", "node_started", "node_finished"]
        );
        // Then the other 149 ends, then the execution's.
        assert_eq!(kinds_all.len(), 153);
        assert!(kinds_all[3..152].iter().all(|k| k == "node_finished"));
        assert_eq!(kinds_all[152], "execution_finished");
        assert!(!s.finish_execution("e1", 124).await.unwrap());
        let after_first = ids[0];
        assert_eq!(
            kinds(s.events_after("e1", after_first, 2).await.unwrap()),
            ["node_started", "node_finished"],
            "resumes after an id, a page at a time"
        );
        // Nothing has happened to an execution not yet run: no events.
        assert_eq!(
            kinds(s.events_after("e2", 0, 10).await.unwrap()),
            Vec::<String>::new()
        );
    }

    /// A cancel is recorded once on an unfinished execution, changes nothing on
    /// a finished one, and is found by the replica that runs it.
    pub async fn cancels_are_recorded_for_the_running_replica(s: &Store) {
        let (_, project, edge) = super::tenancy(s).await;
        let rows = [ResultRow::new("c1", "n1", "h1", NodeExecStatus::Pending)];
        s.insert_execution(&exec("c1", &project, &edge, 10), &rows)
            .await
            .unwrap();
        s.insert_execution(&exec("c2", &project, &edge, 10), &[])
            .await
            .unwrap();
        s.finish_execution("c2", 11).await.unwrap();
        assert_eq!(s.request_cancel("c1", 20).await.unwrap(), Some(true));
        assert_eq!(s.request_cancel("c1", 30).await.unwrap(), Some(true));
        assert_eq!(s.request_cancel("c2", 20).await.unwrap(), Some(false));
        assert_eq!(s.request_cancel("nope", 20).await.unwrap(), None);
        let e = s.execution("c1").await.unwrap().unwrap();
        assert_eq!(
            e.cancel_requested_at,
            Some(20),
            "the first request's time stays"
        );
        let ids = ["c1".to_string(), "c2".to_string(), "nope".to_string()];
        assert_eq!(s.cancel_requested(&ids).await.unwrap(), ["c1"]);
    }

    /// An Idempotency-Key is claimed once per user: a second claim finds the
    /// first request's hash and execution; another user, or a claim older than
    /// the time to live, starts afresh; a released claim is free again.
    pub async fn idempotency_keys_are_claimed_once_per_user(s: &Store) {
        use postern_bastion::store::IdempotencyClaim::{Claimed, Held};
        let day = 24 * 3600 * 1000;
        let key = |user: &'static str| postern_bastion::store::IdempotencyKey {
            org_id: "o",
            username: user,
            key: "k1",
        };
        let claim = |user: &'static str, sha: &'static str, exec: &'static str, now: i64| async move {
            s.claim_idempotency_key(&key(user), sha, exec, now, day, 30_000)
                .await
        };
        assert_eq!(claim("alice", "h1", "x1", 1000).await.unwrap(), Claimed);
        assert_eq!(
            claim("alice", "h2", "x2", 2000).await.unwrap(),
            Held {
                request_sha256: "h1".into(),
                exec_id: "x1".into()
            }
        );
        assert_eq!(claim("bob", "h1", "x3", 2000).await.unwrap(), Claimed);
        assert_eq!(
            claim("alice", "h4", "x4", 1000 + day + 1).await.unwrap(),
            Claimed
        );
        s.release_idempotency_key(&key("alice"), "x4")
            .await
            .unwrap();
        assert_eq!(
            claim("alice", "h5", "x5", 1000 + day + 2).await.unwrap(),
            Claimed
        );
    }

    /// A claim is held by its request for as long as that request renews its
    /// lease, however old the claim (the review's slow first submit, waiting
    /// for the audit chain, lost its key to a retry after 30 s and both ran);
    /// only a claim whose lease ran out is taken over, and the request that
    /// lost it then stores nothing. A claim bound to its execution is held
    /// for good.
    pub async fn idempotency_claims_are_taken_over_only_from_a_gone_request(s: &Store) {
        use postern_bastion::store::IdempotencyClaim::{Claimed, Held};
        let (_, project, edge) = super::tenancy(s).await;
        let day = 24 * 3600 * 1000;
        let lease = 30_000;
        let k = postern_bastion::store::IdempotencyKey {
            org_id: "o",
            username: "alice",
            key: "slow",
        };
        let held_by = |exec: &str| Held {
            request_sha256: "h".into(),
            exec_id: exec.into(),
        };
        assert_eq!(
            s.claim_idempotency_key(&k, "h", "first", 1_000, day, lease)
                .await
                .unwrap(),
            Claimed
        );
        // 31 s later by the claims' clock, its request still at work: held.
        assert_eq!(
            s.claim_idempotency_key(&k, "h", "retry", 32_000, day, lease)
                .await
                .unwrap(),
            held_by("first")
        );
        assert!(s.renew_idempotency_claim(&k, "first", lease).await.unwrap());
        assert_eq!(
            s.claim_idempotency_key(&k, "h", "retry", 62_000, day, lease)
                .await
                .unwrap(),
            held_by("first")
        );
        // Its request gone (no renewal: the lease runs out), a retry takes it.
        assert!(s.renew_idempotency_claim(&k, "first", -1).await.unwrap());
        assert_eq!(
            s.claim_idempotency_key(&k, "h", "retry", 63_000, day, lease)
                .await
                .unwrap(),
            Claimed
        );
        // The first request, arriving at last, stores nothing, and learns it.
        assert!(
            !s.insert_execution_owned(&exec("first", &project, &edge, 64_000), &[], None, Some(&k))
                .await
                .unwrap()
        );
        assert!(s.execution("first").await.unwrap().is_none());
        assert!(!s.renew_idempotency_claim(&k, "first", lease).await.unwrap());
        // Releasing what is no longer its own frees nothing.
        s.release_idempotency_key(&k, "first").await.unwrap();
        assert_eq!(
            s.claim_idempotency_key(&k, "h", "third", 65_000, day, lease)
                .await
                .unwrap(),
            held_by("retry")
        );
        // The retry's execution binds the claim: held for good, even with no
        // lease, and not released by a late failure.
        assert!(
            s.insert_execution_owned(&exec("retry", &project, &edge, 66_000), &[], None, Some(&k))
                .await
                .unwrap()
        );
        assert!(s.execution("retry").await.unwrap().is_some());
        assert!(s.renew_idempotency_claim(&k, "retry", -1).await.unwrap());
        s.release_idempotency_key(&k, "retry").await.unwrap();
        assert_eq!(
            s.claim_idempotency_key(&k, "h", "fourth", 67_000, day, lease)
                .await
                .unwrap(),
            held_by("retry")
        );
    }

    /// Output is bytes. A NUL (which PostgreSQL refuses in text) or any other byte
    /// round-trips, and one row the database refuses cannot fail the others of its
    /// batch: the writer isolates it (see the engine's writer), and here each row
    /// of a batch that holds a NUL is stored whole.
    pub async fn any_output_bytes_round_trip(s: &Store) {
        let (_, project, edge) = super::tenancy(s).await;
        let rows: Vec<ResultRow> = (0..4)
            .map(|i| {
                ResultRow::new(
                    "b1",
                    &format!("n{i}"),
                    &format!("h{i}"),
                    NodeExecStatus::Running,
                )
            })
            .collect();
        s.insert_execution(&exec("b1", &project, &edge, 10), &rows)
            .await
            .unwrap();
        let outputs: Vec<Vec<u8>> = vec![
            b"nul\0inside".to_vec(),
            (0..=255u8).collect(),
            vec![0xff, 0xfe, 0xfd],
            "plain ünïcödé\n".as_bytes().to_vec(),
        ];
        let updates: Vec<ResultUpdate> = outputs
            .iter()
            .enumerate()
            .map(|(i, out)| {
                let mut r = ResultRow::new(
                    "b1",
                    &format!("n{i}"),
                    &format!("h{i}"),
                    NodeExecStatus::Succeeded,
                );
                r.stdout = out.clone();
                r.stderr = out.iter().rev().copied().collect();
                r.finished_at = Some(20);
                ResultUpdate::Finished(Box::new(r))
            })
            .collect();
        s.apply_result_updates(&updates).await.unwrap();
        let page = s
            .execution_page("b1", 10, 0, usize::MAX)
            .await
            .unwrap()
            .unwrap();
        for (i, r) in page.results.iter().enumerate() {
            assert_eq!(r.stdout, outputs[i], "node {i}");
            let rev: Vec<u8> = outputs[i].iter().rev().copied().collect();
            assert_eq!(r.stderr, rev, "node {i}");
        }
        assert_eq!(page.counts.succeeded, 4);
    }

    /// A page holds at least one node, and no more output than its budget after that.
    pub async fn pages_stop_at_the_output_budget(s: &Store) {
        let (_, project, edge) = super::tenancy(s).await;
        let rows: Vec<ResultRow> = (0..5)
            .map(|i| {
                let mut r = ResultRow::new(
                    "p1",
                    &format!("n{i}"),
                    &format!("h{i}"),
                    NodeExecStatus::Succeeded,
                );
                r.stdout = vec![b'x'; 1000];
                r
            })
            .collect();
        s.insert_execution(&exec("p1", &project, &edge, 10), &rows)
            .await
            .unwrap();
        let page = s.execution_page("p1", 100, 0, 2500).await.unwrap().unwrap();
        assert_eq!(page.results.len(), 2);
        assert_eq!(page.next_offset, Some(2));
        let page = s.execution_page("p1", 100, 4, 10).await.unwrap().unwrap();
        assert_eq!((page.results.len(), page.next_offset), (1, None));
        let page = s.execution_page("p1", 100, 0, 10).await.unwrap().unwrap();
        assert_eq!(
            (page.results.len(), page.next_offset),
            (1, Some(1)),
            "one node even over budget"
        );

        // The budget counts what the answer carries: NUL is UTF-8 and goes out
        // as \u0000, six bytes a byte (the review's 100 MB answer from 16 MiB).
        let rows: Vec<ResultRow> = (0..3)
            .map(|i| {
                let mut r = ResultRow::new(
                    "p2",
                    &format!("n{i}"),
                    &format!("h{i}"),
                    NodeExecStatus::Succeeded,
                );
                r.stdout = vec![0u8; 1000];
                r
            })
            .collect();
        s.insert_execution(&exec("p2", &project, &edge, 10), &rows)
            .await
            .unwrap();
        let page = s
            .execution_page("p2", 100, 0, 10_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.results.len(), 1, "1000 NULs are 6002 bytes of JSON");
    }
}
use executions::{
    any_output_bytes_round_trip, cancels_are_recorded_for_the_running_replica,
    idempotency_claims_are_taken_over_only_from_a_gone_request,
    idempotency_keys_are_claimed_once_per_user, pages_stop_at_the_output_budget,
    results_are_stored_once_and_paged,
};
both_backends!(
    cancels_are_recorded_for_the_running_replica,
    idempotency_keys_are_claimed_once_per_user,
    idempotency_claims_are_taken_over_only_from_a_gone_request,
    results_are_stored_once_and_paged,
    any_output_bytes_round_trip,
    pages_stop_at_the_output_budget
);

/// A database that is busy or gone is "retry later" (503), not a bug (500): the
/// classification is checked on real errors from both drivers.
#[tokio::test]
async fn busy_or_unreachable_databases_are_unavailable_not_bugs() {
    let t = common::sqlite().await;
    let pool = t.store.pool();
    let holder = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let mut waiter = pool.acquire().await.unwrap();
    // No busy wait on this connection, so the lock is refused at once.
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut *waiter)
        .await
        .unwrap();
    let busy = sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ('o', 'o', 1)")
        .execute(&mut *waiter)
        .await
        .unwrap_err();
    assert!(StoreError::Db(busy).is_unavailable());
    // Not a drop: sqlx would roll back later, and the lock would still be held below.
    holder.rollback().await.unwrap();

    let unique = StoreError::Db(
        sqlx::query(
            "INSERT INTO orgs (id, name, created_at) VALUES ('x', 'dup', 1), ('y', 'dup', 1)",
        )
        .execute(&mut *waiter)
        .await
        .unwrap_err(),
    );
    assert!(!unique.is_unavailable(), "{unique}");
    drop(waiter);
    t.cleanup().await;

    sqlx::any::install_default_drivers();
    let refused = StoreError::Db(
        <sqlx::AnyConnection as sqlx::Connection>::connect("postgres://postgres@127.0.0.1:1/test")
            .await
            .unwrap_err(),
    );
    assert!(refused.is_unavailable(), "{refused}");
    assert!(!StoreError::NotFound("user".into()).is_unavailable());
}

/// The bounded queue of unauthenticated audit events on `store`, with the log
/// it writes to and what stops and waits for its writer.
fn bounded_queue(
    store: &Store,
) -> (
    Audit,
    postern_bastion::audit::queue::AuditQueue,
    tokio_util::task::TaskTracker,
    tokio_util::sync::CancellationToken,
) {
    let audit = Audit::new(store.clone());
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let metrics = std::sync::Arc::new(postern_bastion::metrics::Metrics::default());
    let q = postern_bastion::audit::queue::AuditQueue::start(
        audit.clone(),
        store.clone(),
        metrics,
        &tasks,
        stop.clone(),
    );
    (audit, q, tasks, stop)
}

/// Failed SSH logins reach the audit log aggregated per source: the first from a
/// source at once, the rest of its window as one entry with their count, and the
/// queue stays bounded however many arrive (the review's 120 KB row per attempt,
/// by a task per connection, is gone).
#[tokio::test]
async fn failed_logins_are_aggregated_per_source_through_a_bounded_queue() {
    use postern_bastion::audit::queue::CAPACITY;
    let t = common::sqlite().await;
    let (audit, q, tasks, stop) = bounded_queue(&t.store);
    let flood: std::net::IpAddr = "10.1.1.1".parse().unwrap();
    let other: std::net::IpAddr = "10.2.2.2".parse().unwrap();
    for i in 0..5_000 {
        q.login_failed(flood, &format!("user{}", i % 20), vec![]);
        assert!(q.pending() <= CAPACITY);
    }
    q.login_failed(other, "bob", vec!["SHA256:x".into()]);
    stop.cancel();
    tasks.close();
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
        .await
        .unwrap();
    let (total, entries) = audit.page(None, 100, 0).await.unwrap();
    assert_eq!(total, 3, "{entries:#?}");
    let summary = entries
        .iter()
        .find(|e| e.detail["more_attempts"].is_number())
        .unwrap();
    assert_eq!(summary.detail["more_attempts"], 4_999);
    assert_eq!(summary.source_ip.as_deref(), Some("10.1.1.1"));
    assert!(summary.detail["names_tried"].as_array().unwrap().len() <= 8);
    assert!(entries.iter().any(|e| e.actor.as_deref() == Some("bob")));
    t.cleanup().await;
}

/// Unauthenticated downloads on the agent port reach the audit log per source
/// and window, like failed logins (the review's finding 6: one row per
/// request before): the first at once with its details, the rest of the
/// window as one entry with their count and the files fetched. A client
/// rotating through the addresses of its IPv6 /64 is still one source.
#[tokio::test]
async fn downloads_are_audited_per_source_and_window() {
    use postern_bastion::audit::queue::CAPACITY;
    let t = common::sqlite().await;
    let (audit, q, tasks, stop) = bounded_queue(&t.store);
    let flood: std::net::IpAddr = "10.1.1.1".parse().unwrap();
    for i in 0..5_000 {
        let file = if i % 2 == 0 {
            "install.sh"
        } else {
            "postern-agent_1.0_amd64.deb"
        };
        q.download(flood, file, serde_json::json!({ "bytes": 10 }));
        assert!(q.pending() <= CAPACITY);
    }
    for i in 0..100u16 {
        let v6 = std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, i));
        q.download(v6, "install.sh", serde_json::json!({ "bytes": 10 }));
    }
    stop.cancel();
    tasks.close();
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
        .await
        .unwrap();
    let (total, entries) = audit.page(None, 100, 0).await.unwrap();
    // 10.1.1.1: the first of each file, then one summary; the /64: the first
    // and one summary.
    assert_eq!(total, 5, "{entries:#?}");
    assert!(entries.iter().all(|e| e.action == "agent.download"));
    let summary = |ip: &str| {
        entries
            .iter()
            .find(|e| e.source_ip.as_deref() == Some(ip) && e.detail["more_downloads"].is_number())
            .unwrap()
    };
    let s = summary("10.1.1.1");
    assert_eq!(s.detail["more_downloads"], 4_998);
    assert_eq!(s.detail["files"].as_array().unwrap().len(), 2);
    assert_eq!(summary("2001:db8:0:7::").detail["more_downloads"], 99);
    let mut firsts: Vec<_> = entries
        .iter()
        .filter(|e| e.source_ip.as_deref() == Some("10.1.1.1") && e.detail["bytes"] == 10)
        .map(|e| e.targets.clone())
        .collect();
    firsts.sort();
    assert_eq!(
        firsts,
        vec![
            vec!["install.sh".to_string()],
            vec!["postern-agent_1.0_amd64.deb".to_string()]
        ]
    );
    t.cleanup().await;
}

/// Replicas write the one audit chain at once, each through its own pool (its
/// own process in production): no entry is lost, none is refused, the chain holds.
#[tokio::test]
async fn audit_chain_holds_with_concurrent_writers_on_separate_pools() {
    let t = common::postgres().await;
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(Audit::new(Store::open(t.store.url()).await.unwrap()));
    }
    let runs = writers.iter().enumerate().map(|(w, a)| async move {
        for i in 0..40 {
            a.record(Event::new(format!("w{w}.{i}"), "ok"))
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(runs).await;
    assert_eq!(writers[0].verify().await.unwrap(), Ok(120));
    for w in writers {
        w.verify().await.unwrap().unwrap();
    }
    t.cleanup().await;
}

/// The replica table, presence and leases, on the database's clock.
#[tokio::test]
async fn replicas_presence_and_leases() {
    let t = common::postgres().await;
    let s = &t.store;
    let lease = 5_000;
    let r1 = s.join_replicas("r1", "127.0.0.1:1", lease).await.unwrap();
    // A live replica's name is not taken twice.
    assert!(matches!(
        s.join_replicas("r1", "127.0.0.1:2", lease).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.heartbeat("r1", r1).await.unwrap());
    // A heartbeat of an older life of the name does not count.
    assert!(!s.heartbeat("r1", r1 - 1).await.unwrap());
    s.join_replicas("r2", "127.0.0.1:3", lease).await.unwrap();
    let (now, rows) = s.replicas().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| now - r.heartbeat_at < lease));

    // The newest channel of a node wins; the older one's end does not erase it.
    s.presence_up("r1", &[("n1".into(), 7), ("n2".into(), 8)])
        .await
        .unwrap();
    s.presence_up("r2", &[("n1".into(), 1)]).await.unwrap();
    s.presence_down("r1", &[("n1".into(), 7)]).await.unwrap();
    let mut p = s.presence_all().await.unwrap();
    p.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    assert_eq!(
        p.iter()
            .map(|r| (r.node_id.as_str(), r.replica.as_str(), r.conn_id))
            .collect::<Vec<_>>(),
        vec![("n1", "r2", 1), ("n2", "r1", 8)]
    );
    // A replica that starts again holds nothing yet.
    // A leave by an older life of the name erases nothing.
    s.leave_replicas("r1", r1 - 1).await.unwrap();
    assert_eq!(s.presence_of(&["n2".into()]).await.unwrap().len(), 1);
    s.leave_replicas("r1", r1).await.unwrap();
    let r1 = s.join_replicas("r1", "127.0.0.1:1", lease).await.unwrap();
    assert_eq!(s.presence_of(&["n2".into()]).await.unwrap(), vec![]);
    assert!(s.heartbeat("r1", r1).await.unwrap());

    // Leases: a live one is not taken; an expired one is, by one replica only.
    let (_, project, edge) = tenancy(s).await;
    let e = |id: &str| executions::exec(id, &project, &edge, 1);
    s.insert_execution_owned(&e("live"), &[], Some(("r1", 60_000)), None)
        .await
        .unwrap();
    s.insert_execution_owned(&e("gone"), &[], Some(("r1", -1)), None)
        .await
        .unwrap();
    s.insert_execution(&e("old"), &[]).await.unwrap();
    let mut taken = s
        .take_expired_executions("r2", 60_000, false, 100)
        .await
        .unwrap();
    taken.sort();
    assert_eq!(taken, vec!["gone".to_string(), "old".to_string()]);
    assert!(
        s.take_expired_executions("r3", 60_000, false, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // r1 lost "gone": renewing tells it so; "live" is still its own.
    let held = s
        .renew_leases("r1", &["live".into(), "gone".into()], 60_000)
        .await
        .unwrap();
    assert_eq!(held, vec!["live".to_string()]);
    // r1 restarting takes back its own live lease.
    assert_eq!(
        s.take_expired_executions("r1", 60_000, true, 100)
            .await
            .unwrap(),
        vec!["live".to_string()]
    );
    t.cleanup().await;
}

/// Two processes starting under one name at once: one of them is refused,
/// whatever the interleaving (the name may be new, or freed by a clean stop).
#[tokio::test]
async fn one_of_two_replicas_starting_under_one_name_is_refused() {
    let t = common::postgres().await;
    let other = Store::open(t.store.url()).await.unwrap();
    for round in 0..10 {
        let name = format!("dup{round}");
        let (a, b) = tokio::join!(
            t.store.join_replicas(&name, "127.0.0.1:1", 5_000),
            other.join_replicas(&name, "127.0.0.1:2", 5_000)
        );
        assert!(
            a.is_ok() != b.is_ok(),
            "round {round}: both or neither joined: {a:?} {b:?}"
        );
        let lost = if a.is_ok() { b } else { a };
        assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
    }
    t.cleanup().await;
}
