//! Process metrics in the Prometheus text format. A handful of atomics is all the
//! bastion needs; the exposition is written by hand to keep the hot path lock-free.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub handshakes: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Channels whose first-contact bookkeeping (health, labels, spool) is done.
    pub first_contacts: AtomicU64,
    pub agents_refused: AtomicU64,
    /// Agent channels that gave up their HTTP/2 connection while idle, that
    /// started a new one, and that are parked now.
    pub agent_parks: AtomicU64,
    pub agent_wakes: AtomicU64,
    pub agents_parked: AtomicU64,
    pub connections_rejected_full: AtomicU64,
    pub enrollments: AtomicU64,
    pub enrollment_failures: AtomicU64,
    pub enrollments_rejected_full: AtomicU64,
    /// Install scripts and agent packages served on the agent port.
    pub agent_downloads: AtomicU64,
    /// Download requests refused (unknown file, wrong method, pool full).
    pub agent_downloads_refused: AtomicU64,
    pub ssh_dropped_per_source: AtomicU64,
    pub rotations: AtomicU64,
    pub rotation_failures: AtomicU64,
    pub api_requests: AtomicU64,
    pub audit_failures: AtomicU64,
    /// Transactions the audit appender committed (entries ÷ commits says how
    /// well it batches), and its entries waiting outside its queue.
    pub audit_commits: AtomicU64,
    pub audit_appended: AtomicU64,
    pub audit_waiting: AtomicU64,
    pub audit_dropped: AtomicU64,
    pub ssh_sessions: AtomicU64,
    pub ssh_denied: AtomicU64,
    pub ssh_auth_failures: AtomicU64,
    pub ssh_rejected_full: AtomicU64,
    pub peer_refused: AtomicU64,
    pub access_publish_failures: AtomicU64,
    pub kube_requests: AtomicU64,
    pub kube_denied: AtomicU64,
    pub kube_rejected_full: AtomicU64,
}

/// Gauges read from the fleet at scrape time.
#[derive(Debug, Default, Clone)]
pub struct LiveGauges {
    pub agents_connected: u64,
    /// With replicas: what this replica sees of its peers.
    pub replica: Option<ReplicaGauges>,
    /// The allocator's figures, when the binary's allocator gives them.
    pub heap: Option<HeapGauges>,
}

/// What the allocator holds, in bytes: `allocated` is what live objects asked
/// for, `active` the pages holding them (the difference is space inside pages
/// between objects), `resident` what the allocator keeps in memory, freed pages
/// not yet returned included. Memory per agent is read from these.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapGauges {
    pub allocated: u64,
    pub active: u64,
    pub resident: u64,
}

/// Set once by the binary that chose the allocator (the library does not know
/// which one it runs under: tests run it under the system's).
static HEAP_READER: std::sync::OnceLock<fn() -> Option<HeapGauges>> = std::sync::OnceLock::new();

/// Makes `/metrics` show the allocator's figures, read by `reader` at each scrape.
pub fn set_heap_reader(reader: fn() -> Option<HeapGauges>) {
    let _ = HEAP_READER.set(reader);
}

/// The allocator's figures now, if the binary said how to read them.
pub fn heap() -> Option<HeapGauges> {
    HEAP_READER.get().and_then(|read| read())
}

#[derive(Debug, Default, Clone)]
pub struct ReplicaGauges {
    pub peers_live: u64,
    pub remote_agents: u64,
    pub connections_out: u64,
    pub connections_in: u64,
    pub routed_out: u64,
    pub routed_in: u64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl Metrics {
    /// `tasks`: the bastion's live tasks (connections, relays, dispatches…), so a
    /// leak shows as a count that only grows. `live`: what the fleet reads now
    /// (metrics know no door and no fleet: the caller reads them).
    pub fn render(&self, live: &LiveGauges, tasks: usize) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: u64, kind: &str| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            "postern_agents_connected",
            "Agents with a live channel.",
            live.agents_connected,
            "gauge",
        );
        gauge(
            "postern_agents_parked",
            "Agent channels parked: idle, holding their TLS session without an HTTP/2 connection until the next call.",
            self.agents_parked.load(Ordering::Relaxed),
            "gauge",
        );
        gauge(
            "postern_audit_waiting",
            "Audit entries of ended requests waiting for room in the appender's full queue; past 16,384 the Kubernetes door takes no new request.",
            self.audit_waiting.load(Ordering::Relaxed),
            "gauge",
        );
        gauge(
            "postern_tasks",
            "Tasks the bastion is running (connections, relays, dispatches, writers).",
            tasks as u64,
            "gauge",
        );
        if let Some(r) = &live.replica {
            gauge(
                "postern_replica_peers_live",
                "Other replicas whose heartbeat is within the lease.",
                r.peers_live,
                "gauge",
            );
            gauge(
                "postern_replica_remote_agents",
                "Agents held by other replicas, as this replica sees them.",
                r.remote_agents,
                "gauge",
            );
            gauge(
                "postern_peer_connections_out",
                "Peer connections this replica dialled that are up.",
                r.connections_out,
                "gauge",
            );
            gauge(
                "postern_peer_connections_in",
                "Peer connections other replicas dialled to this one that are up.",
                r.connections_in,
                "gauge",
            );
            gauge(
                "postern_routed_calls_out_total",
                "Agent calls this replica sent through a peer.",
                r.routed_out,
                "counter",
            );
            gauge(
                "postern_routed_calls_in_total",
                "Agent calls peers sent through this replica to its agents.",
                r.routed_in,
                "counter",
            );
        }
        if let Some(h) = &live.heap {
            gauge(
                "postern_heap_allocated_bytes",
                "Bytes live objects asked the allocator for.",
                h.allocated,
                "gauge",
            );
            gauge(
                "postern_heap_active_bytes",
                "Bytes in the allocator's pages that hold live objects.",
                h.active,
                "gauge",
            );
            gauge(
                "postern_heap_resident_bytes",
                "Bytes the allocator keeps in memory, freed pages not yet returned included.",
                h.resident,
                "gauge",
            );
        }
        let counters: [(&str, &str, &AtomicU64); 29] = [
            (
                "postern_audit_appended_total",
                "Audit entries the appender wrote (÷ postern_audit_commits_total: entries a commit).",
                &self.audit_appended,
            ),
            (
                "postern_audit_commits_total",
                "Transactions the audit appender committed (several entries each under load).",
                &self.audit_commits,
            ),
            (
                "postern_agent_parks_total",
                "Times an idle agent channel gave up its HTTP/2 connection (see --agent-park-after).",
                &self.agent_parks,
            ),
            (
                "postern_agent_wakes_total",
                "Times a parked agent channel started a new HTTP/2 connection for a call.",
                &self.agent_wakes,
            ),
            (
                "postern_access_publish_failures_total",
                "Access changes that could not be recorded for the other replicas (their sessions stay until next authorized).",
                &self.access_publish_failures,
            ),
            (
                "postern_peer_refused_total",
                "Connections on the peer port refused (handshake failed, not a replica's certificate, wrong protocol).",
                &self.peer_refused,
            ),
            (
                "postern_enrollments_rejected_total",
                "Enrollments refused (503) because the enrollment pool was full.",
                &self.enrollments_rejected_full,
            ),
            (
                "postern_ssh_dropped_per_source_total",
                "SSH connections dropped because their source had too many unauthenticated ones.",
                &self.ssh_dropped_per_source,
            ),
            (
                "postern_audit_dropped_total",
                "Audit events of unauthenticated peers dropped because their queue was full (a flood); the count is audited.",
                &self.audit_dropped,
            ),
            (
                "postern_agent_handshakes_total",
                "Agent channels whose TLS and HTTP/2 handshakes completed.",
                &self.handshakes,
            ),
            (
                "postern_agent_first_contacts_total",
                "Agent channels whose first contact (health, version, labels, spooled results) is done; behind postern_agent_handshakes_total while a reconnecting fleet is being caught up.",
                &self.first_contacts,
            ),
            (
                "postern_agent_handshake_failures_total",
                "TLS handshakes on the agent port that failed or timed out.",
                &self.handshake_failures,
            ),
            (
                "postern_agent_refused_total",
                "Valid certificates refused (node deleted, disabled, wrong protocol).",
                &self.agents_refused,
            ),
            (
                "postern_agent_connections_rejected_total",
                "Connections dropped at once: the agent port was full, or their source address had its share of handshakes in flight.",
                &self.connections_rejected_full,
            ),
            (
                "postern_enrollments_total",
                "Nodes enrolled.",
                &self.enrollments,
            ),
            (
                "postern_enrollment_failures_total",
                "Enrollment requests refused.",
                &self.enrollment_failures,
            ),
            (
                "postern_agent_downloads_total",
                "Install scripts and agent packages served on the agent port.",
                &self.agent_downloads,
            ),
            (
                "postern_agent_downloads_refused_total",
                "Requests for the install script or agent packages refused (unknown file, wrong method, too many at once).",
                &self.agent_downloads_refused,
            ),
            (
                "postern_cert_rotations_total",
                "Node certificates rotated.",
                &self.rotations,
            ),
            (
                "postern_cert_rotation_failures_total",
                "Node certificate rotations that failed (retried later).",
                &self.rotation_failures,
            ),
            (
                "postern_api_requests_total",
                "Admin and cmdexec API requests.",
                &self.api_requests,
            ),
            (
                "postern_audit_failures_total",
                "Audit entries that could not be written.",
                &self.audit_failures,
            ),
            (
                "postern_ssh_sessions_total",
                "SSH jump sessions relayed to a node.",
                &self.ssh_sessions,
            ),
            (
                "postern_ssh_denied_total",
                "SSH channel or forwarding requests refused.",
                &self.ssh_denied,
            ),
            (
                "postern_ssh_auth_failures_total",
                "SSH connections that ended without a proven, registered key.",
                &self.ssh_auth_failures,
            ),
            (
                "postern_ssh_connections_rejected_total",
                "SSH connections dropped because too many were still authenticating.",
                &self.ssh_rejected_full,
            ),
            (
                "postern_kube_requests_total",
                "Kubernetes API requests forwarded to a gateway agent.",
                &self.kube_requests,
            ),
            (
                "postern_kube_denied_total",
                "Kubernetes API requests refused at the bastion (credential, role, no gateway).",
                &self.kube_denied,
            ),
            (
                "postern_kube_connections_rejected_total",
                "Connections to the Kubernetes listener dropped because it, or the source, was full.",
                &self.kube_rejected_full,
            ),
        ];
        for (name, help, c) in counters {
            gauge(name, help, c.load(Ordering::Relaxed), "counter");
        }
        out
    }
}
