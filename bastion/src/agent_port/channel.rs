//! One agent's channel after the TLS handshake: check that the certificate still
//! names a live node, open HTTP/2 as the client on the connection the agent
//! dialled, register it, and hold it until it ends, the node is cut off, or the
//! bastion shuts down (then the senders are dropped and h2 sends GOAWAY).
//! The channel's task drives the HTTP/2 connection and its keep-alive.

use std::net::SocketAddr;
use std::sync::Arc;

use postern_api::labels::Labels;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use postern_api::admin::NodeState;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::agents::client;
use crate::agents::{AgentConn, ChannelHandle, NodeLink};
use crate::clock::now_ms;
use crate::metrics::inc;
use crate::pki::node_cert_info;
use crate::state::Shared;
use crate::store::LabelReport;
use postern_channel::{Framed, Role};

/// Registers the channel, then reads the node's state again; unregisters it and
/// answers `false` when the node is disabled, deleted or unreadable by then.
///
/// The node may have been disabled or deleted since the caller checked it.
/// Disabling writes the store, then cuts what the registry holds; registering,
/// then reading the store, means one of the two always sees the other, so no
/// channel of a disabled node stays.
pub(super) async fn register_live(shared: &Shared, agent: &Arc<AgentConn>) -> bool {
    shared.fleet.register(agent.clone()).await;
    match shared.store.node(&agent.node_id).await {
        Ok(Some(n)) if n.state != NodeState::Disabled => true,
        other => {
            shared.fleet.unregister(&agent.node_id, agent.conn_id).await;
            if let Err(e) = other {
                tracing::error!(error = %e, "store unavailable; closing agent channel");
            }
            false
        }
    }
}

/// Tells the agent to drop spooled results the store already holds: the DELETE
/// after storing is lost when the channel or the bastion goes at that moment,
/// and the agent would otherwise keep (and reload at every start) those results.
async fn release_stored_results(shared: &Shared, agent: &NodeLink) {
    let timeout = shared.settings.agent_call_timeout;
    let Ok(spooled) = client::call_json::<(), postern_api::agent::SpooledExecs>(
        agent,
        http::Method::GET,
        postern_api::agent::routes::EXEC,
        None,
        timeout,
    )
    .await
    else {
        return;
    };
    let mut ids = spooled.finished;
    ids.truncate(postern_api::agent::MAX_SPOOLED_LISTED);
    let Ok(stored) = shared.store.stored_final(agent.node_id(), &ids).await else {
        return;
    };
    for id in stored {
        let path = format!("/v1/exec/{id}");
        let _ = client::call_json::<(), serde_json::Value>(
            agent,
            http::Method::DELETE,
            &path,
            None,
            timeout,
        )
        .await;
    }
}

/// The byte stream h2 runs on: the TLS stream itself, or the framing that
/// lets the channel park (`postern_channel`).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

type Counted = tokio_util::io::InspectReader<TlsStream<TcpStream>, Box<dyn FnMut(&[u8]) + Send>>;
type H2Conn = h2::client::Connection<Box<dyn Io>, bytes::Bytes>;

/// hyper's client settings, on h2 itself (see `agents::wire`).
async fn h2_handshake(
    io: Box<dyn Io>,
    within: Duration,
) -> Option<(h2::client::SendRequest<bytes::Bytes>, H2Conn)> {
    let handshake = h2::client::Builder::new()
        .initial_max_send_streams(100)
        .initial_window_size(postern_api::agent::STREAM_WINDOW)
        .initial_connection_window_size(postern_api::agent::CONNECTION_WINDOW)
        .max_frame_size(postern_api::agent::MAX_FRAME)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, bytes::Bytes>(io);
    match Box::pin(tokio::time::timeout(within, handshake)).await {
        Ok(Ok(pair)) => Some(pair),
        _ => None,
    }
}

/// Counts a channel in `postern_agents_parked` for as long as it is held.
struct ParkedGauge<'a>(&'a AtomicU64);

impl<'a> ParkedGauge<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        inc(gauge);
        ParkedGauge(gauge)
    }
}

impl Drop for ParkedGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What ended a turn of the channel's loop.
enum Turn {
    /// The agent closed, failed or went silent.
    PeerEnded,
    /// The bastion ends it: shutdown, the node cut off.
    Ended,
    ParkDue,
    Wanted,
}

/// `framed`: the agent speaks `postern_channel`'s framing, so the channel
/// parks after `park_after` without a call.
pub(super) async fn run(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    cert: CertificateDer<'static>,
    shared: Arc<Shared>,
    framed: bool,
) {
    let info = match node_cert_info(&cert) {
        Ok(i) => i,
        Err(e) => {
            inc(&shared.metrics.agents_refused);
            tracing::warn!(%peer, error = %e, "agent certificate unreadable; closing");
            return;
        }
    };
    // Parsed: its DER is not kept for the channel's life.
    drop(cert);
    let node = match shared.store.node(&info.node_id).await {
        Ok(Some(n)) if n.state != NodeState::Disabled => n,
        Ok(Some(_)) => {
            inc(&shared.metrics.agents_refused);
            tracing::info!(%peer, node = %info.node_id, "refusing channel of disabled node");
            return;
        }
        Ok(None) => {
            inc(&shared.metrics.agents_refused);
            tracing::info!(%peer, node = %info.node_id, "refusing channel of deleted or unknown node");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "store unavailable; closing agent channel");
            return;
        }
    };

    let s = &shared.settings;
    // Counts the reads that brought bytes: a channel that is receiving is
    // alive, whether or not a ping's answer is queued behind the data the
    // agent is sending (`keep_alive`).
    let reads = Arc::new(AtomicU64::new(0));
    let counted: Counted = tokio_util::io::InspectReader::new(tls, {
        let reads = reads.clone();
        Box::new(move |got: &[u8]| {
            if !got.is_empty() {
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let (framed, io): (Option<Framed<Counted>>, Box<dyn Io>) = if framed {
        let f = Framed::new(counted, Role::Bastion);
        let io = Box::new(f.io());
        (Some(f), io)
    } else {
        (None, Box::new(counted))
    };
    let Some((sender, conn)) = h2_handshake(io, s.handshake_timeout).await else {
        inc(&shared.metrics.handshake_failures);
        return;
    };
    let cancel = shared.shutdown.child_token();
    let agent = Arc::new(AgentConn {
        node_id: node.id.clone(),
        conn_id: shared.fleet.next_conn_id(),
        peer,
        connected_at_ms: now_ms(),
        sender: ChannelHandle::new(sender),
        cancel: cancel.clone(),
        cert: std::sync::Mutex::new(info),
        rotating: AtomicBool::new(false),
        release_inline: AtomicBool::new(false),
    });
    let conn_id = agent.conn_id;
    let node_id = node.id.clone();
    // Counted before the node shows as reachable, so whoever sees it
    // reachable also sees its handshake counted.
    inc(&shared.metrics.handshakes);
    if !Box::pin(register_live(&shared, &agent)).await {
        inc(&shared.metrics.agents_refused);
        tracing::info!(%peer, node = %node_id, "node disabled, deleted or unreadable as its channel came up; closing");
        return;
    }
    tracing::debug!(%peer, node = %node_id, hostname = %node.hostname, "agent channel up");

    let link = NodeLink::local(agent.clone());
    // Bookkeeping runs beside the connection so the channel is served meanwhile.
    // Its steps are boxed: this task lives as long as the channel, once per
    // node, and its size is the largest of what it awaits; boxed, what runs
    // once takes memory only while it runs.
    let bookkeeping = async {
        let kube_node_keys = Box::pin(first_contact(&shared, &link, &node)).await;
        if kube_node_keys {
            // Until the channel ends: the select below drops this future with it.
            Box::pin(super::kube_keys::follow(&shared, &link, &node_id)).await;
        } else if node.kube_keys.is_some() {
            Box::pin(super::kube_keys::forget(&shared, &node_id)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut bookkeeping = Box::pin(bookkeeping);
    let park_after = match &framed {
        Some(_) if !s.park_after.is_zero() => Some(s.park_after),
        _ => None,
    };
    let live_conn = |mut conn: H2Conn| {
        let pings = keep_alive(
            conn.ping_pong(),
            reads.clone(),
            s.keepalive_interval,
            s.keepalive_timeout,
        );
        (conn, Box::pin(pings))
    };
    // The live connection and its keep-alive (`None` while parked, when the
    // handle is held here, with the channel counted as parked).
    let mut live = Some(live_conn(conn));
    let mut held = None;
    // After a park that could not be made now, the next try waits a while.
    let mut next_try = tokio::time::Instant::now();
    let ended_by_peer = loop {
        let turn = match live.as_mut() {
            Some((conn, keep_alive)) => {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Turn::Ended,
                    r = &mut *conn => {
                        if let Err(e) = r {
                            tracing::debug!(node = %node_id, error = %e, "agent channel closed with error");
                        }
                        Turn::PeerEnded
                    }
                    () = keep_alive.as_mut() => {
                        tracing::debug!(node = %node_id, "agent channel did not answer a ping in time; closing it");
                        Turn::PeerEnded
                    }
                    () = quiet(agent.sender.usage(), park_after, next_try) => Turn::ParkDue,
                    _ = &mut bookkeeping => Turn::Ended,
                }
            }
            None => {
                let Some(f) = &framed else {
                    break true;
                };
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Turn::Ended,
                    r = f.parked(s.keepalive_interval, s.keepalive_timeout) => {
                        match r {
                            Ok(Some(c)) => tracing::debug!(node = %node_id, control = ?c, "the agent sent out of turn on a parked channel; closing it"),
                            Ok(None) => tracing::debug!(node = %node_id, "parked agent channel closed by the agent"),
                            Err(e) => tracing::debug!(node = %node_id, error = %e, "parked agent channel failed"),
                        }
                        Turn::PeerEnded
                    }
                    () = agent.sender.wanted() => Turn::Wanted,
                    _ = &mut bookkeeping => Turn::Ended,
                }
            }
        };
        match turn {
            Turn::PeerEnded => break true,
            Turn::Ended => break false,
            Turn::ParkDue => {
                let Some(f) = &framed else { continue };
                next_try = tokio::time::Instant::now() + Duration::from_secs(1);
                // Not while a call holds the handle or is open, nor with a
                // chunk half written (the agent's h2 would read it cut).
                let Some(mut slot) = agent.sender.try_hold() else {
                    continue;
                };
                if agent.sender.usage().open() > 0 || !f.at_boundary() {
                    continue;
                }
                *slot = None;
                live = None;
                let parked = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    r = f.park(s.keepalive_timeout) => Some(r),
                };
                held = Some((slot, ParkedGauge::new(&shared.metrics.agents_parked)));
                match parked {
                    Some(Ok(())) => inc(&shared.metrics.agent_parks),
                    Some(Err(e)) => {
                        tracing::debug!(node = %node_id, error = %e, "agent channel failed while parking; closing it");
                        break true;
                    }
                    // Cut off or shut down meanwhile: closed as a parked one is.
                    None => break false,
                }
            }
            Turn::Wanted => {
                let (Some(f), Some((mut slot, parked))) = (&framed, held.take()) else {
                    continue;
                };
                // WAKE and the preface leave with the new connection's first
                // frames (its SETTINGS; the call's request follows). Inside
                // the race, so a cut-off sends no WAKE.
                let wake = async {
                    f.wake();
                    h2_handshake(Box::new(f.io()), s.handshake_timeout)
                        .await
                        .ok_or_else(|| std::io::Error::other("the HTTP/2 handshake failed"))
                };
                let woken = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    r = wake => Some(r),
                };
                let (sender, conn) = match woken {
                    Some(Ok(pair)) => pair,
                    Some(Err(e)) => {
                        tracing::debug!(node = %node_id, error = %e, "agent channel failed while waking; closing it");
                        break true;
                    }
                    None => {
                        // Cut off or shut down meanwhile: closed as a parked one is.
                        held = Some((slot, parked));
                        break false;
                    }
                };
                *slot = Some(sender);
                drop(slot);
                drop(parked);
                live = Some(live_conn(conn));
                inc(&shared.metrics.agent_wakes);
            }
        }
    };
    if held.is_some() {
        // Ended parked: calls waiting for the handle find none (`Closed`).
        if let Some(f) = &framed
            && !ended_by_peer
        {
            if shared.shutdown.is_cancelled() {
                shared.fleet.drained_one();
            }
            // Closed on purpose: the agent sees TLS end cleanly.
            let _ = tokio::time::timeout(Duration::from_secs(2), f.close()).await;
        }
    }
    drop(held);
    drop(bookkeeping);
    // A dead connection goes at once: the calls still on it fail now, not
    // after the bookkeeping below.
    let mut conn = if ended_by_peer {
        None
    } else {
        live.map(|(conn, _)| conn)
    };
    Box::pin(shared.fleet.unregister(&node_id, conn_id)).await;
    drop(link);
    drop(agent);
    if let Some(conn) = conn.as_mut()
        && shared.shutdown.is_cancelled()
    {
        shared.fleet.drained_one();
        // Graceful: once no call holds the channel, h2 sends GOAWAY; give it
        // a moment to flush before the socket closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
    }
    drop(conn);
    let _ = Box::pin(
        shared
            .store
            .touch_nodes(std::slice::from_ref(&node_id), now_ms()),
    )
    .await;
    tracing::debug!(node = %node_id, "agent channel down");
}

/// Answers once the channel has had no call open for `after`, not before
/// `not_before` (never when `after` is `None`: the agent cannot park).
async fn quiet(
    usage: &crate::link::Usage,
    after: Option<Duration>,
    not_before: tokio::time::Instant,
) {
    let Some(after) = after else {
        return std::future::pending().await;
    };
    tokio::time::sleep_until(not_before).await;
    loop {
        // Open calls first: a call that ends after this read moves the mark
        // read next.
        let open = usage.open();
        let since = Duration::from_millis(u64::try_from(now_ms() - usage.last_ms()).unwrap_or(0));
        if open == 0 && since >= after {
            return;
        }
        // With a call open, its end moves the mark: look again a whole
        // `after` later.
        let wait = if open > 0 { after } else { after - since };
        tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
    }
}

/// How many intervals in a row a receiving channel goes unpinged, and how
/// many times its ping's deadline is extended while data keeps coming: an
/// agent that sends but never reads (so never answers) is found within
/// `every` × 4 + `within` × 4 all the same.
const MAX_SKIPS: u32 = 3;
const MAX_EXTENSIONS: u32 = 3;

/// Answers when the channel is dead: after `every` with nothing received,
/// the agent is pinged, and a ping whose answer has not come within `within`
/// while nothing else came either means a silent peer, a dropped route or a
/// half-open socket. A channel bringing data is pinged only every fourth
/// interval (hyper skipped it altogether), and a pong late behind a download
/// is waited for up to four times `within`.
async fn keep_alive(
    pings: Option<h2::PingPong>,
    reads: Arc<AtomicU64>,
    every: Duration,
    within: Duration,
) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    let mut seen = reads.load(Ordering::Relaxed);
    let mut skipped = 0;
    loop {
        tokio::time::sleep(every).await;
        let now = reads.load(Ordering::Relaxed);
        if now != seen && skipped < MAX_SKIPS {
            seen = now;
            skipped += 1;
            continue;
        }
        skipped = 0;
        seen = now;
        if pings.send_ping(h2::Ping::opaque()).is_err() {
            return;
        }
        let mut deadline = tokio::time::Instant::now() + within;
        let mut extended = 0;
        loop {
            let pong =
                tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| pings.poll_pong(cx)))
                    .await;
            match pong {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => return,
                Err(_) => {
                    let now = reads.load(Ordering::Relaxed);
                    if now == seen || extended == MAX_EXTENSIONS {
                        return;
                    }
                    // Still receiving: the pong may be behind that data.
                    seen = now;
                    extended += 1;
                    deadline += within;
                }
            }
        }
        seen = reads.load(Ordering::Relaxed);
    }
}

/// What the bastion does once when a channel comes up: the node is marked
/// provisioned and seen, its agent's health read (version, capabilities,
/// labels), and results it still spools but the store holds released. What
/// the agent says is its word: none of it grants the node anything (labels
/// wait for approval once the node is in use, the Kubernetes gateway role is
/// granted by a project admin).
/// Answers whether the agent reads keys from Kubernetes.
async fn first_contact(
    shared: &Arc<Shared>,
    link: &NodeLink,
    node: &crate::store::NodeRow,
) -> bool {
    let node_id = &node.id;
    // Each write below is made only when it changes something: a fleet of
    // 10,000 reconnecting after a restart costs the health call each and few
    // statements. (Last-seen times are written in batches by the flush.)
    if node.state == NodeState::Approved {
        let _ = shared.store.mark_provisioned(node_id).await;
    }
    if node.last_seen_at.is_none() {
        // Never seen before: seen now, not at the next flush.
        let _ = shared
            .store
            .touch_nodes(std::slice::from_ref(node_id), now_ms())
            .await;
    }
    let mut kube_node_keys = false;
    let mut spooled = None;
    match client::health(link, shared.settings.agent_call_timeout).await {
        Ok(h) => {
            kube_node_keys = h.kube_node_keys;
            spooled = h.spooled_finished;
            link.set_release_inline(h.exec_release_inline);
            // The agent's word: bounded and printable before it is stored.
            let version = postern_api::validate::peer_line(&h.agent_version, 64);
            if node.agent_version.as_deref() != Some(version.as_str()) {
                let _ = shared.store.set_agent_version(node_id, &version).await;
            }
            record_kube_capability(shared, node, h.kube_gateway_capable).await;
            // The agent's labels, checked again here: a bad one is dropped
            // (and said so), never stored or matched.
            let mut labels = h.labels;
            labels.retain(|k, v| {
                let ok = postern_api::labels::validate_key(k).is_ok()
                    && postern_api::labels::validate_value(v).is_ok();
                if !ok {
                    tracing::warn!(node = %node_id, label = %postern_api::validate::peer_text(k, 80), "the agent reported a label that is not valid; ignoring it");
                }
                ok
            });
            if labels.len() > postern_api::labels::MAX_LABELS {
                tracing::warn!(node = %node_id, n = labels.len(), "the agent reported too many labels; keeping the first {}", postern_api::labels::MAX_LABELS);
                labels = labels
                    .into_iter()
                    .take(postern_api::labels::MAX_LABELS)
                    .collect();
            }
            record_labels(shared, node, labels).await;
        }
        Err(e) => tracing::debug!(node = %node_id, error = %e, "agent health call failed"),
    }
    if spooled != Some(0) {
        release_stored_results(shared, link).await;
    }
    inc(&shared.metrics.first_contacts);
    kube_node_keys
}

/// What the agent says of `--kube-apiserver` is recorded as a capability only:
/// the node serves its edge's Kubernetes API when a project admin also granted
/// it the role. A node that starts claiming it without a grant (a
/// misconfiguration, or a compromised node after kubectl traffic) is audited,
/// so the claim is seen; it changes nothing.
async fn record_kube_capability(shared: &Arc<Shared>, node: &crate::store::NodeRow, capable: bool) {
    if node.kube_gateway_capable == capable {
        return;
    }
    let changed = match shared
        .store
        .set_kube_gateway_capable(&node.id, capable)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(node = %node.id, error = %e, "cannot record whether the agent can be a Kubernetes gateway");
            return;
        }
    };
    if !changed || !capable {
        return;
    }
    let granted = node.kube_gateway_granted;
    if !granted {
        tracing::warn!(node = %node.id, hostname = %node.hostname, "the agent runs with --kube-apiserver but the node is not granted the Kubernetes gateway role; it gets no requests until a project admin grants it (postern nodes kube-gateway)");
    }
    let mut ev = crate::audit::Event::new(
        "node.kube_gateway_capable",
        if granted { "ok" } else { "held" },
    )
    .detail(serde_json::json!({
        "hostname": node.hostname,
        "node_id": node.id,
        "capable": true,
        "granted": granted,
    }));
    ev.targets = vec![node.hostname.clone()];
    if let Ok(Some(edge)) = shared.store.edge_by_id(&node.edge_id).await
        && let Ok(Some(project)) = shared.store.project_by_id(&edge.project_id).await
    {
        ev = ev.org(&project.org_id).project(&project.name);
    }
    shared.audit.batched(ev).await;
}

/// Labels an agent reports become the node's only through an approval: a
/// project admin's, which names the labels it covers, or an auto-approving
/// token's, which covers the first report of the node it let in. Any other
/// report that differs from the approved labels waits for a project admin,
/// whatever the node's state: pending, approved while its agent was away,
/// provisioned, or enabled again. A node, compromised or misconfigured, must
/// not move itself into the targets of a selector (and receive their commands).
async fn record_labels(shared: &Arc<Shared>, node: &crate::store::NodeRow, labels: Labels) {
    // What was approved, nothing held, and no first report still to take:
    // the store would answer Unchanged. (Skipping writes nothing, so it can
    // never take or hold labels by mistake.)
    if !node.agent_labels_open && node.agent_labels_pending.is_none() && node.agent_labels == labels
    {
        return;
    }
    let store = &shared.store;
    match store.report_agent_labels(&node.id, &labels).await {
        Ok(LabelReport::Held) => {
            tracing::warn!(node = %node.id, hostname = %node.hostname, "the agent reports other labels than were approved; they wait for a project admin's approval (postern nodes approve)");
            // The approved labels as they are now, not as this channel found
            // them: an approval may have come in between.
            let approved = match store.node(&node.id).await {
                Ok(Some(n)) => n.agent_labels,
                _ => node.agent_labels.clone(),
            };
            let mut ev =
                crate::audit::Event::new("node.labels_held", "held").detail(serde_json::json!({
                    "hostname": node.hostname,
                    "labels": approved,
                    "reported": labels,
                }));
            ev.targets = vec![node.hostname.clone()];
            if let Ok(Some(edge)) = store.edge_by_id(&node.edge_id).await
                && let Ok(Some(project)) = store.project_by_id(&edge.project_id).await
            {
                ev = ev.org(&project.org_id).project(&project.name);
            }
            shared.audit.batched(ev).await;
        }
        Ok(LabelReport::Taken) => {
            tracing::debug!(node = %node.id, "the first labels of a node its token approved; taken");
        }
        Ok(LabelReport::Withdrawn | LabelReport::Unchanged) => {}
        Err(e) => tracing::warn!(node = %node.id, error = %e, "cannot record the agent's labels"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{EnrollmentTokenRow, NewNode, Store};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// A real h2 client handle over an in-memory pipe to a server that answers 200.
    async fn sender() -> h2::client::SendRequest<bytes::Bytes> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::new(),
                )))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (sender, conn) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    /// The interleaving the review suspected: the node passes the state check,
    /// is disabled before its channel is registered, then the channel registers.
    /// On the code as it landed the channel stayed, reachable; now it is refused.
    #[tokio::test]
    async fn a_node_disabled_between_its_check_and_its_registration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path()).await.unwrap();
        let pki = crate::pki::Pki::in_memory(Duration::from_secs(3600)).unwrap();
        let shared = Shared::new(
            store.clone(),
            pki,
            crate::state::Settings::default(),
            tokio_util::sync::CancellationToken::new(),
        );
        let org = store.create_org("o", 1).await.unwrap();
        let p = store.create_project(&org.id, "p", 1).await.unwrap();
        let e = store.create_edge(&p.id, "e", 1).await.unwrap();
        store
            .insert_enrollment_token(&EnrollmentTokenRow {
                id: "t".into(),
                edge_id: e.id.clone(),
                secret_hash: "h".into(),
                created_by: None,
                created_at: 0,
                expires_at: i64::MAX,
                max_uses: 1,
                uses: 0,
                auto_approve: true,
                revoked_at: None,
            })
            .await
            .unwrap();
        let new = NewNode {
            id: "n1",
            token_id: "t",
            edge_id: &e.id,
            hostname: "n1",
            agent_version: "0",
            auto_approve: true,
            cert_serial: "01",
            cert_expires_at: i64::MAX,
        };
        store.enroll_node(&new, 1).await.unwrap();
        let conn = |id: u64| async move {
            Arc::new(AgentConn {
                node_id: "n1".into(),
                conn_id: id,
                peer: "127.0.0.1:1".parse().unwrap(),
                connected_at_ms: 0,
                sender: ChannelHandle::new(sender().await),
                cancel: tokio_util::sync::CancellationToken::new(),
                cert: std::sync::Mutex::new(crate::pki::NodeCertInfo {
                    node_id: "n1".into(),
                    serial: "01".into(),
                    not_before_ms: 0,
                    not_after_ms: i64::MAX,
                }),
                rotating: AtomicBool::new(false),
                release_inline: AtomicBool::new(false),
            })
        };
        // A live node registers.
        assert!(register_live(&shared, &conn(1).await).await);
        assert!(shared.fleet.is_reachable("n1"));
        shared.fleet.unregister("n1", 1).await;

        // Checked while approved (the caller's check), then disabled, as the
        // REST call does it: the store first, then the registry cut (which finds
        // nothing yet), then the channel registers.
        store
            .set_node_state("n1", NodeState::Disabled, 2)
            .await
            .unwrap();
        assert!(!shared.fleet.disconnect("n1").await);
        assert!(!register_live(&shared, &conn(2).await).await);
        assert!(
            !shared.fleet.is_reachable("n1"),
            "a disabled node stayed connected"
        );

        // Deleted in the window: the same.
        store
            .set_node_state("n1", NodeState::Approved, 3)
            .await
            .unwrap();
        store.delete_node("n1").await.unwrap();
        assert!(!register_live(&shared, &conn(3).await).await);
        assert!(!shared.fleet.is_reachable("n1"));
    }
}
