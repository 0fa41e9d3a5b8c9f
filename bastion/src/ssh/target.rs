//! Which node a jump names: `<hostname>`, or `<hostname>.<edge>.<project>` when the
//! hostname alone is not unique among the projects the user can see. Nodes in
//! projects the user has no role in are invisible: asking for one reads exactly
//! like asking for a node that does not exist.

use crate::authz::{self, Decision, Principal};
use crate::store::{NodePlace, ProjectRow, Store, StoreError};

#[derive(Debug)]
pub struct Target {
    pub place: NodePlace,
    pub project: ProjectRow,
    /// `None`: any login (org admins).
    pub logins: Option<Vec<String>>,
    /// Destinations for `ssh -L` (the roles' `forward_to`); empty: none.
    pub forward_to: Vec<String>,
}

/// Why a jump is refused; the text goes to the user as the channel-open failure.
#[derive(Debug)]
pub struct Refusal {
    pub reason: String,
    pub project: Option<String>,
    pub node: Option<String>,
}

impl Refusal {
    pub fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            project: None,
            node: None,
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        crate::access::Denied::from(e).into()
    }
}

/// The SSH door's reading of the shared outcome: the reason goes to the user as
/// the channel-open failure.
impl From<crate::access::Denied> for Refusal {
    fn from(d: crate::access::Denied) -> Refusal {
        use crate::access::Denied;
        match d {
            Denied::Forbidden { reason, project } => Refusal {
                reason,
                project,
                node: None,
            },
            Denied::Unavailable(_) | Denied::Internal(_) => {
                Refusal::new("the bastion cannot reach its database; try again shortly")
            }
            Denied::Unauthenticated(m) | Denied::NotFound(m) => Refusal::new(m),
        }
    }
}

pub async fn resolve(store: &Store, p: &Principal, host: &str) -> Result<Target, Refusal> {
    let host = host.trim_end_matches('.');
    if postern_api::validate::hostname(host).is_err() {
        return Err(Refusal::new(format!("{host:?} is not a valid node name")));
    }
    let mut candidates: Vec<NodePlace> = store.nodes_named(&p.org_id, host).await?;
    // `<hostname>.<edge>.<project>`: hostnames may hold dots, so try both readings.
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() >= 3 {
        let (project, edge) = (labels[labels.len() - 1], labels[labels.len() - 2]);
        let short = labels[..labels.len() - 2].join(".");
        for n in store.nodes_named(&p.org_id, &short).await? {
            if n.edge_name == edge && n.project_name == project {
                candidates.push(n);
            }
        }
    }
    let mut visible = Vec::new();
    let mut forbidden = None;
    for place in candidates {
        let Some(project) = store.project_by_id(&place.project_id).await? else {
            continue;
        };
        match authz::ssh_logins(p, &project) {
            Ok(logins) => visible.push(Target {
                forward_to: p.forward_to_for(&project.id),
                place,
                project,
                logins,
            }),
            Err(Decision::Forbidden(why)) => {
                forbidden = Some(Refusal {
                    reason: why,
                    project: Some(project.name.clone()),
                    node: Some(place.node_id.clone()),
                })
            }
            Err(_) => {}
        }
    }
    match visible.len() {
        0 => Err(forbidden.unwrap_or_else(|| {
            Refusal::new(format!(
                "no node {host:?} in any project you have a role in; check the name (hostname or hostname.edge.project)"
            ))
        })),
        1 => Ok(visible.remove(0)),
        _ => {
            let mut names: Vec<String> = visible
                .iter()
                .map(|t| {
                    format!(
                        "{}.{}.{}",
                        t.place.hostname, t.place.edge_name, t.place.project_name
                    )
                })
                .collect();
            // Sorted, so the same question always gets the same answer.
            names.sort();
            Err(Refusal::new(format!(
                "{host:?} names {} nodes; use one of: {}",
                names.len(),
                names.join(", ")
            )))
        }
    }
}
