//! The LISTEN side of replica notifications, on its own database session.
//!
//! What was sent while the session was down is lost, so each (re)connection
//! starts by re-reading the presence table whole; a full re-read also runs every
//! [`RELOAD`] in case a notification was dropped on the way.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::replicas::Replicas;
use crate::state::Shared;

const RELOAD: Duration = Duration::from_secs(30);

pub(super) async fn run(shared: Arc<Shared>, r: Arc<Replicas>) {
    let mut failures = 0u32;
    loop {
        let connected = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            c = tokio::time::timeout(Duration::from_secs(10), connect(&shared, &r)) => c,
        };
        let mut listener = match connected {
            Ok(Ok(l)) => {
                failures = 0;
                l
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 {
                    tracing::error!(error = %e, "cannot listen for the other replicas' notifications; retrying");
                }
                pause(&shared, failures).await;
                continue;
            }
            Err(_) => {
                failures += 1;
                pause(&shared, failures).await;
                continue;
            }
        };
        reload(&shared, &r).await;
        let mut reload_tick = tokio::time::interval(RELOAD);
        reload_tick.tick().await;
        loop {
            let n = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = reload_tick.tick() => { reload(&shared, &r).await; continue; }
                n = listener.try_recv() => n,
            };
            match n {
                Ok(Some(n)) => handle(&shared, &r, n.channel(), n.payload()).await,
                Ok(None) => {
                    // The session dropped; the next receive reconnects. Whatever
                    // was sent meanwhile is lost: read the tables again.
                    tracing::warn!("replica notification session lost; reconnecting");
                    reload(&shared, &r).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replica notification session failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn connect(shared: &Shared, r: &Replicas) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect(shared.store.url()).await?;
    let c = &r.channels;
    l.listen_all([c.presence.as_str(), c.events.as_str(), c.exec.as_str()])
        .await?;
    Ok(l)
}

async fn pause(shared: &Shared, failures: u32) {
    let delay = Duration::from_millis(200 * u64::from(failures.min(25)));
    tokio::select! {
        _ = shared.shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

async fn reload(shared: &Arc<Shared>, r: &Replicas) {
    match shared.store.presence_all().await {
        Ok(rows) => {
            r.reload(rows);
            shared.fleet.bump();
        }
        Err(e) => tracing::warn!(error = %e, "cannot read which replica holds which node"),
    }
    r.events.wake.notify_one();
    shared.cmdexec.wake_takeover();
}

async fn handle(shared: &Arc<Shared>, r: &Replicas, channel: &str, payload: &str) {
    let c = &r.channels;
    if channel == c.presence {
        // A replica that joined since our last heartbeat: learn of it now, or
        // its nodes would count as unreachable until the next one. A name that
        // is not in the table is not a replica's: ignored.
        // Unsigned notices are dropped before they cost anything (a table read).
        let Some(body) = r.verified(payload) else {
            tracing::debug!("presence notice without a valid signature; ignored");
            return;
        };
        let Some((from, _)) = body.split_once('|') else {
            return;
        };
        if !r.knows(from) {
            if let Err(e) = r.refresh_limited().await {
                tracing::warn!(error = %e, "cannot read the table of replicas");
            }
            if !r.knows(from) {
                return;
            }
        }
        let taken = r.apply_presence(body);
        shared.fleet.bump();
        for node in taken {
            if shared.fleet.local(&node).is_some() {
                // Two channels of one node: the row in the store names the newest.
                let shared = shared.clone();
                shared.tasks.clone().spawn(async move {
                    if let Ok(rows) = shared.store.presence_of(std::slice::from_ref(&node)).await
                        && let Some(row) = rows.first()
                        && Some(row.replica.as_str()) != shared.fleet.replicas().map(|r| r.name.as_str())
                        && shared.fleet.cut_local(&node)
                    {
                        tracing::info!(node = %node, replica = %row.replica, "the node connected to another replica; closing its older channel here");
                    }
                });
            }
        }
    } else if channel == c.events {
        r.events.wake.notify_one();
    } else if channel == c.exec {
        shared.cmdexec.wake_takeover();
    }
}
