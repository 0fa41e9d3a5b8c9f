//! A replica's part in the deployment, run on the core: its heartbeat and
//! lease, the presence of its nodes written for the others, the events the
//! others published (access changes, nodes cut off, gateway grants) read and
//! applied here, and the LISTEN session that wakes it. The data they keep is
//! `replicas`; this is what runs, and so it may use the whole core.

mod events;
mod listen;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::replicas::{
    HEARTBEAT, MAX_PAYLOAD, PRESENCE_BATCH, PresenceOp, REPLICA_LEASE, Replicas,
};
use crate::state::Shared;
use crate::store::StoreError;

/// Starts heartbeat, presence writer, event reader and listener on the
/// bastion's tasks, when this bastion is one replica of several.
pub fn start(shared: &Arc<Shared>) {
    let Some(r) = shared.fleet.replicas().cloned() else {
        return;
    };
    let rx = r.ops_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(rx) = rx {
        shared
            .tasks
            .spawn(write_presence(shared.clone(), r.clone(), rx));
    }
    shared.tasks.spawn(heartbeat(shared.clone(), r.clone()));
    shared.tasks.spawn(events::run(shared.clone(), r.clone()));
    shared.tasks.spawn(listen::run(shared.clone(), r));
}

async fn heartbeat(shared: Arc<Shared>, r: Arc<Replicas>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = r.started_at.load(Ordering::Relaxed);
        let beat = tokio::time::timeout(HEARTBEAT * 2, async {
            if !shared.store.heartbeat(&r.name, started).await? {
                // Our row was removed (an operator, or a namesake took it): join
                // again; the channels we hold are re-announced below.
                tracing::warn!(replica = %r.name, "this replica's row was gone; joining again");
                let lease = REPLICA_LEASE.as_millis() as i64;
                let at = match shared.store.join_replicas(&r.name, &r.advertise, lease).await {
                    Err(StoreError::Conflict(what)) => {
                        // Another process runs under our name: two of us would
                        // take each other's nodes and leases. Stop this one,
                        // leaving the name's rows to the other.
                        tracing::error!(replica = %r.name, "another live replica holds {what}; stopping this one");
                        r.superseded.store(true, Ordering::Relaxed);
                        shared.shutdown.cancel();
                        return Err(StoreError::Conflict(what));
                    }
                    other => other?,
                };
                r.started_at.store(at, Ordering::Relaxed);
                let held: Vec<(String, u64)> = shared
                    .fleet
                    .local_node_ids()
                    .into_iter()
                    .filter_map(|n| shared.fleet.local(&n).map(|c| (n, c.conn_id)))
                    .collect();
                shared.store.presence_up(&r.name, &held).await?;
            }
            shared.store.replicas().await
        })
        .await;
        match beat {
            Ok(Ok((db_now, rows))) => {
                r.set_view(db_now, rows);
                shared.fleet.bump();
                if !r.db_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("database reachable again");
                }
                // A peer's death makes its nodes unreachable with time alone;
                // waiters re-check on their own every second.
            }
            Ok(Err(e)) => {
                if r.db_ok.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, "cannot beat the replica heartbeat: database unavailable");
                }
            }
            Err(_) => {
                if r.db_ok.swap(false, Ordering::Relaxed) {
                    tracing::error!("the replica heartbeat timed out: database unavailable");
                }
            }
        }
    }
}

/// Writes presence changes in batches and tells the others. A batch that fails
/// is retried, since a node's channel here that is not on record is invisible
/// to the other replicas.
async fn write_presence(shared: Arc<Shared>, r: Arc<Replicas>, mut rx: mpsc::Receiver<PresenceOp>) {
    let mut ops = Vec::new();
    loop {
        let first = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            op = rx.recv() => match op { Some(op) => op, None => return },
        };
        ops.push(first);
        tokio::time::sleep(PRESENCE_BATCH).await;
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
            if ops.len() >= 4096 {
                break;
            }
        }
        // Up then down of one connection within a batch cancel out.
        let mut up: Vec<(String, u64)> = Vec::new();
        let mut down: Vec<(String, u64)> = Vec::new();
        for op in ops.drain(..) {
            match op {
                PresenceOp::Up(n, c) => up.push((n, c)),
                PresenceOp::Down(n, c) => {
                    if let Some(i) = up.iter().position(|(un, uc)| *un == n && *uc == c) {
                        up.swap_remove(i);
                    } else {
                        down.push((n, c));
                    }
                }
            }
        }
        // A channel that is gone by now is not announced up.
        up.retain(|(n, c)| shared.fleet.local(n).is_some_and(|a| a.conn_id == *c));
        let changes = up
            .iter()
            .map(|(n, c)| format!("+{n}:{c}"))
            .chain(down.iter().map(|(n, c)| format!("-{n}:{c}")));
        let mut payloads = Vec::new();
        let mut payload = String::new();
        for c in changes {
            if payload.len() + c.len() + 1 > MAX_PAYLOAD {
                payloads.push(format!("{}|{payload}", r.name));
                payload.clear();
            }
            if !payload.is_empty() {
                payload.push(',');
            }
            payload.push_str(&c);
        }
        if !payload.is_empty() {
            payloads.push(format!("{}|{payload}", r.name));
        }
        let payloads: Vec<String> = payloads.iter().map(|p| r.sign(p)).collect();
        let mut attempt = 0u32;
        loop {
            let written = shared
                .store
                .presence_apply(&r.name, &up, &down, Some((&r.channels.presence, &payloads)))
                .await;
            match written {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::warn!(error = %e, "cannot record which nodes this replica holds; retrying");
                    }
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(25)))) => {}
                    }
                }
            }
        }
    }
}
