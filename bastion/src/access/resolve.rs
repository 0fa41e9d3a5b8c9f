//! What a request names, found for a principal: a project (by name or id, in the
//! principal's org), an edge of it, with `authz`'s decision applied. Names that
//! cannot exist are not sent to the database, and a project the principal may not
//! see reads exactly like one that does not exist.

use postern_api::validate;

use super::Denied;
use crate::authz::{Action, Decision, Principal, decide};
use crate::store::{EdgeRow, ProjectRow, Store};

/// The project `name` (or id) in `p`'s org, if `p` may do `action` on it.
pub async fn project(
    store: &Store,
    p: &Principal,
    name: &str,
    action: Action,
) -> Result<ProjectRow, Denied> {
    let project = visible_project(store, p, name).await?;
    match decide(p, action, Some(&project)) {
        Decision::Allow => Ok(project),
        Decision::NotVisible => Err(project_not_found(name)),
        Decision::Forbidden(why) => Err(Denied::forbidden(why, Some(&project.name))),
    }
}

/// The project `name` (or id) if it is in `p`'s org; the door decides what `p`
/// may do in it.
pub async fn visible_project(
    store: &Store,
    p: &Principal,
    name: &str,
) -> Result<ProjectRow, Denied> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(project_not_found(name));
    }
    // By name, or by id (the form cmdexec clients often hold).
    match store.project_by_name(&p.org_id, name).await? {
        Some(project) => Ok(project),
        None => store
            .project_by_id(name)
            .await?
            .filter(|project| project.org_id == p.org_id)
            .ok_or_else(|| project_not_found(name)),
    }
}

pub fn project_not_found(name: &str) -> Denied {
    Denied::NotFound(format!(
        "project {:?} not found",
        name.chars().take(80).collect::<String>()
    ))
}

/// The edge `name` of `project`.
pub async fn edge(store: &Store, project: &ProjectRow, name: &str) -> Result<EdgeRow, Denied> {
    let not_found = || {
        Denied::NotFound(format!(
            "edge {:?} not found in project {:?}",
            name.chars().take(80).collect::<String>(),
            project.name
        ))
    };
    if validate::name("edge", name).is_err() {
        return Err(not_found());
    }
    store
        .edge_by_name(&project.id, name)
        .await?
        .ok_or_else(not_found)
}
