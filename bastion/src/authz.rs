//! The one place where allow or deny is decided.
//!
//! A caller who may not see a project gets `NotVisible` (answered as 404, so the
//! existence of other orgs' or projects' resources does not leak); a caller who may
//! see it but not do the action gets `Forbidden` (403). The HTTP layer audits every
//! decision together with the request it answers.

use postern_api::admin::Role;

use crate::store::{BindingRow, ProjectRow};

/// Who is calling, as established by a valid API token (or SSH key, later).
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub user_name: String,
    pub org_id: String,
    pub bindings: Vec<BindingRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Users, roles, projects, other users' tokens.
    ManageOrg,
    ReadAudit,
    /// Edges, node approval and deletion, a node's Kubernetes gateway role,
    /// enrollment tokens.
    ManageProject,
    /// List edges and nodes, read executions and history.
    ReadProject,
    /// Run commands through cmdexec.
    Execute,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::ManageOrg => "manage the org",
            Action::ReadAudit => "read the audit log",
            Action::ManageProject => "manage this project",
            Action::ReadProject => "read this project",
            Action::Execute => "execute commands",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    NotVisible,
    Forbidden(String),
}

impl Principal {
    pub fn is_org_admin(&self) -> bool {
        self.bindings
            .iter()
            .any(|b| b.project_id.is_none() && b.role == Role::OrgAdmin)
    }

    /// The role that governs what this principal does in the project: org
    /// admin when it is one, else its role there.
    pub fn effective_role(&self, project_id: &str) -> Option<Role> {
        if self.is_org_admin() {
            Some(Role::OrgAdmin)
        } else {
            self.project_role(project_id)
        }
    }

    pub fn project_role(&self, project_id: &str) -> Option<Role> {
        self.bindings
            .iter()
            .find(|b| b.project_id.as_deref() == Some(project_id))
            .map(|b| b.role)
    }

    /// Where this principal may forward ports (`ssh -L`) from nodes of the project:
    /// what its org-wide role and its role in the project list, together.
    pub fn forward_to_for(&self, project_id: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .bindings
            .iter()
            .filter(|b| b.project_id.is_none() || b.project_id.as_deref() == Some(project_id))
            .flat_map(|b| b.forward_to.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Unix logins this principal may use on nodes of the project; `None` means any.
    pub fn logins_for(&self, project_id: &str) -> Option<Vec<String>> {
        if self.is_org_admin() {
            return None;
        }
        Some(
            self.bindings
                .iter()
                .filter(|b| b.project_id.as_deref() == Some(project_id))
                .flat_map(|b| b.logins.iter().cloned())
                .collect(),
        )
    }
}

/// Decides whether `p` may do `action`, on `project` when the action is scoped to one.
pub fn decide(p: &Principal, action: Action, project: Option<&ProjectRow>) -> Decision {
    if let Some(project) = project
        && project.org_id != p.org_id
    {
        return Decision::NotVisible;
    }
    if p.is_org_admin() {
        return Decision::Allow;
    }
    let role = project.and_then(|pr| p.project_role(&pr.id));
    let forbidden = |role: Option<Role>| {
        Decision::Forbidden(match role {
            Some(r) => format!("role {r} may not {}; ask an org admin", action.describe()),
            None => format!("only an org_admin may {}", action.describe()),
        })
    };
    match action {
        Action::ManageOrg | Action::ReadAudit | Action::Execute => match (project, role) {
            (Some(_), None) => Decision::NotVisible,
            (_, role) => forbidden(role),
        },
        Action::ManageProject => match role {
            None => Decision::NotVisible,
            Some(Role::ProjectAdmin | Role::OrgAdmin) => Decision::Allow,
            Some(r) => forbidden(Some(r)),
        },
        Action::ReadProject => match role {
            None => Decision::NotVisible,
            Some(_) => Decision::Allow,
        },
    }
}

/// Whether `p` may reach the Kubernetes clusters (edges) of `project` through the
/// bastion, and with which Kubernetes groups it is impersonated there: those of
/// its org-wide role and of its role in the project, each binding's listed groups
/// or, when it lists none, `postern:<role>`. Any role in the project may reach
/// the clusters: what it may do there is the cluster's RBAC's to decide, on
/// these groups.
pub fn kube_groups(p: &Principal, project: &ProjectRow) -> Result<Vec<String>, Decision> {
    if project.org_id != p.org_id {
        return Err(Decision::NotVisible);
    }
    if !p.is_org_admin() && p.project_role(&project.id).is_none() {
        return Err(Decision::NotVisible);
    }
    let mut groups: Vec<String> = p
        .bindings
        .iter()
        .filter(|b| b.project_id.is_none() || b.project_id.as_deref() == Some(&project.id))
        .flat_map(|b| match &b.kube_groups {
            Some(g) => g.clone(),
            None => vec![postern_api::kube::default_group(b.role)],
        })
        .collect();
    groups.sort();
    groups.dedup();
    Ok(groups)
}

/// Which unix logins `p` may use over SSH on nodes of `project`: `Ok(None)` for any
/// (org admins), `Ok(Some(list))` for a project role that lists logins. A project
/// the caller has no role in is `NotVisible`; a role without logins is `Forbidden`.
pub fn ssh_logins(p: &Principal, project: &ProjectRow) -> Result<Option<Vec<String>>, Decision> {
    if project.org_id != p.org_id {
        return Err(Decision::NotVisible);
    }
    if p.is_org_admin() {
        return Ok(None);
    }
    let Some(role) = p.project_role(&project.id) else {
        return Err(Decision::NotVisible);
    };
    let logins = p.logins_for(&project.id).unwrap_or_default();
    if logins.is_empty() {
        return Err(Decision::Forbidden(format!(
            "your role {role} in project {} allows no SSH logins; ask an org admin to add logins to it",
            project.name
        )));
    }
    Ok(Some(logins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(org: &str, id: &str) -> ProjectRow {
        ProjectRow {
            id: id.into(),
            org_id: org.into(),
            name: id.into(),
            created_at: 0,
        }
    }

    fn principal(bindings: Vec<(Option<&str>, Role)>) -> Principal {
        Principal {
            user_id: "u".into(),
            user_name: "alice".into(),
            org_id: "o1".into(),
            bindings: bindings
                .into_iter()
                .map(|(p, role)| BindingRow {
                    project_id: p.map(String::from),
                    role,
                    logins: vec!["deploy".into()],
                    forward_to: vec![],
                    kube_groups: None,
                })
                .collect(),
        }
    }

    #[test]
    fn org_admin_may_do_everything_in_its_org_only() {
        let admin = principal(vec![(None, Role::OrgAdmin)]);
        for a in [
            Action::ManageOrg,
            Action::ReadAudit,
            Action::ManageProject,
            Action::ReadProject,
            Action::Execute,
        ] {
            assert_eq!(
                decide(&admin, a, Some(&project("o1", "p"))),
                Decision::Allow
            );
            assert_eq!(
                decide(&admin, a, Some(&project("o2", "p"))),
                Decision::NotVisible
            );
        }
        assert_eq!(admin.logins_for("p"), None);
    }

    #[test]
    fn kube_groups_come_from_the_roles_that_reach_the_project() {
        let p1 = project("o1", "p1");
        let member = principal(vec![(Some("p1"), Role::ProjectMember)]);
        assert_eq!(
            kube_groups(&member, &p1).unwrap(),
            vec!["postern:project_member".to_string()]
        );
        assert_eq!(
            kube_groups(&member, &project("o1", "p2")),
            Err(Decision::NotVisible)
        );
        assert_eq!(
            kube_groups(&member, &project("o2", "p1")),
            Err(Decision::NotVisible)
        );
        let mut listed = principal(vec![(Some("p1"), Role::ReadOnly)]);
        listed.bindings[0].kube_groups = Some(vec!["viewers".into(), "sre".into()]);
        assert_eq!(
            kube_groups(&listed, &p1).unwrap(),
            vec!["sre".to_string(), "viewers".to_string()]
        );
        listed.bindings[0].kube_groups = Some(vec![]);
        assert!(kube_groups(&listed, &p1).unwrap().is_empty());
        let admin = principal(vec![(None, Role::OrgAdmin)]);
        assert_eq!(
            kube_groups(&admin, &project("o1", "any")).unwrap(),
            vec!["postern:org_admin".to_string()]
        );
    }

    #[test]
    fn project_roles() {
        let p = project("o1", "p");
        let other = project("o1", "q");
        let padmin = principal(vec![(Some("p"), Role::ProjectAdmin)]);
        let member = principal(vec![(Some("p"), Role::ProjectMember)]);
        let ro = principal(vec![(Some("p"), Role::ReadOnly)]);
        assert_eq!(
            decide(&padmin, Action::ManageProject, Some(&p)),
            Decision::Allow
        );
        assert!(matches!(
            decide(&member, Action::ManageProject, Some(&p)),
            Decision::Forbidden(_)
        ));
        assert_eq!(decide(&ro, Action::ReadProject, Some(&p)), Decision::Allow);
        assert!(matches!(
            decide(&padmin, Action::Execute, Some(&p)),
            Decision::Forbidden(_)
        ));
        assert_eq!(
            decide(&padmin, Action::ReadProject, Some(&other)),
            Decision::NotVisible
        );
        assert_eq!(
            decide(&padmin, Action::Execute, Some(&other)),
            Decision::NotVisible
        );
        assert!(matches!(
            decide(&padmin, Action::ManageOrg, None),
            Decision::Forbidden(_)
        ));
        assert_eq!(member.logins_for("p"), Some(vec!["deploy".to_string()]));
        assert_eq!(
            ssh_logins(&member, &p),
            Ok(Some(vec!["deploy".to_string()]))
        );
        assert_eq!(ssh_logins(&member, &other), Err(Decision::NotVisible));
        assert_eq!(
            ssh_logins(&member, &project("o2", "p")),
            Err(Decision::NotVisible)
        );
        let mut none = principal(vec![(Some("p"), Role::ReadOnly)]);
        none.bindings[0].logins.clear();
        assert!(matches!(ssh_logins(&none, &p), Err(Decision::Forbidden(_))));
        assert_eq!(member.logins_for("q"), Some(vec![]));
    }
}
