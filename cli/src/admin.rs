//! The operator's steps: projects, edges, nodes (approving them, granting the
//! Kubernetes gateway role), join tokens, users and their roles.

use std::time::Duration;

use clap::{Args, Subcommand};
use postern_api::admin::{CreateEnrollmentToken, CreateToken, Role, RoleBinding};
use postern_api::labels::{Labels, joined};

use crate::output::{ago, json, safe, table};
use crate::{CliError, Ctx, ProjectOnly, Scope};

#[derive(Debug, Args)]
pub struct ProjectsArgs {
    #[command(subcommand)]
    action: Option<ProjectsCmd>,
    /// JSON, as the API answers it
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ProjectsCmd {
    /// Make a project (org admins)
    Create { name: String },
}

pub async fn projects(ctx: &Ctx, a: ProjectsArgs) -> Result<(), CliError> {
    if let Some(ProjectsCmd::Create { name }) = a.action {
        let p = ctx.client.create_project(&name).await?;
        return if a.json {
            json(&p)
        } else {
            crate::outln!("project {} created", safe(&p.name));
            Ok(())
        };
    }
    let projects = ctx.client.projects().await?;
    if a.json {
        return json(&projects);
    }
    let rows: Vec<Vec<String>> = projects
        .iter()
        .map(|p| vec![p.name.clone(), p.created_at.clone()])
        .collect();
    table(&["PROJECT", "CREATED"], &rows);
    Ok(())
}

#[derive(Debug, Args)]
pub struct EdgesArgs {
    #[command(subcommand)]
    action: Option<EdgesCmd>,
    #[command(flatten)]
    project: ProjectOnly,
    /// JSON, as the API answers it
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum EdgesCmd {
    /// Make an edge: a cluster or site whose nodes join together (project admins)
    Create { name: String },
}

pub async fn edges(ctx: &Ctx, a: EdgesArgs) -> Result<(), CliError> {
    let project = ctx.project_of(&a.project).await?;
    if let Some(EdgesCmd::Create { name }) = a.action {
        let e = ctx.client.create_edge(&project, &name).await?;
        return if a.json {
            json(&e)
        } else {
            crate::outln!(
                "edge {} created in {}; nodes join it with a token from: postern join-token -p {} -e {}",
                safe(&e.name),
                safe(&project),
                safe(&project),
                safe(&e.name)
            );
            Ok(())
        };
    }
    let edges = ctx.client.edges(&project).await?;
    if a.json {
        return json(&edges);
    }
    let rows: Vec<Vec<String>> = edges
        .iter()
        .map(|e| vec![e.name.clone(), e.created_at.clone()])
        .collect();
    table(&["EDGE", "CREATED"], &rows);
    Ok(())
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    action: Option<NodesCmd>,
    #[command(flatten)]
    scope: Scope,
    /// JSON, as the API answers it
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum NodesCmd {
    /// Let a node in, and the labels its agent reports (project admins)
    ///
    /// A node that joined with a token without auto-approve waits for this,
    /// and so do labels its agent reports that no approval took yet. The
    /// labels approved are named in the call: if the agent reports others by
    /// the time it arrives, nothing is approved.
    Approve {
        node: String,
        /// The agent labels you approve, as `postern nodes` showed them
        /// (repeat for each): refused if the agent reports others by then.
        /// Default: those it reports as this command starts, printed
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Approve the node only: whatever its agent reports keeps waiting
        #[arg(long, conflicts_with = "labels")]
        no_labels: bool,
    },
    /// Make an approved node one of its edge's Kubernetes gateways: kubectl
    /// through the bastion may go to it (project admins). Its agent must also
    /// run with --kube-apiserver; that alone never makes a gateway.
    KubeGateway {
        node: String,
        /// Take the role back: no new request goes to it, and its open ones end
        #[arg(long)]
        revoke: bool,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    postern_api::labels::parse_label_arg(s).map_err(|e| e.to_string())
}

pub async fn nodes(ctx: &Ctx, a: NodesArgs) -> Result<(), CliError> {
    let (project, edge) = ctx.scope(&a.scope).await?;
    match a.action {
        Some(NodesCmd::Approve {
            node,
            labels,
            no_labels,
        }) => {
            // The approval names the labels it covers, so the bastion takes only
            // what a person looked at: what the user gave, or, asked on a
            // terminal, what it reports now. Never what it reports now unseen:
            // a node may have changed them since the user listed it.
            let named: Option<Labels> = if no_labels {
                None
            } else if labels.is_empty() {
                let n = ctx.client.node(&project, &edge, &node).await?;
                let reported = n.reported_agent_labels().clone();
                if !reported.is_empty() {
                    confirm_labels(&n.hostname, &reported, &project, &edge)?;
                }
                Some(reported)
            } else {
                Some(labels.into_iter().collect())
            };
            let n = ctx
                .client
                .approve_node(&project, &edge, &node, named.as_ref())
                .await?;
            if a.json {
                return json(&n);
            }
            crate::outln!("node {} approved ({})", safe(&n.hostname), n.state.as_str());
            if let Some(l) = &named {
                crate::outln!("its agent's labels, approved: {}", safe(&joined(l)));
            }
            if let Some(waiting) = &n.agent_labels_pending {
                eprintln!(
                    "its agent reports {}, which waits for approval: {}",
                    safe(&joined(waiting)),
                    approve_command(&n.hostname, waiting, &project, &edge)
                );
            }
            return Ok(());
        }
        Some(NodesCmd::KubeGateway { node, revoke }) => {
            let n = ctx
                .client
                .set_kube_gateway(&project, &edge, &node, !revoke)
                .await?;
            if a.json {
                return json(&n);
            }
            let place = format!("{}/{}", safe(&project), safe(&edge));
            if revoke {
                crate::outln!(
                    "node {} is no longer a Kubernetes gateway of {place}",
                    safe(&n.hostname)
                );
            } else {
                crate::outln!(
                    "node {} is a Kubernetes gateway of {place}",
                    safe(&n.hostname)
                );
                if !n.kube_gateway.capable {
                    eprintln!(
                        "its agent does not run with --kube-apiserver (as of its last connection): it gets requests once it does"
                    );
                }
            }
            return Ok(());
        }
        None => {}
    }
    let nodes = ctx.client.nodes(&project, &edge).await?;
    if a.json {
        return json(&nodes);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.hostname.clone(),
                n.state.as_str().to_string(),
                if n.reachable { "yes" } else { "no" }.to_string(),
                n.last_seen_at
                    .as_deref()
                    .map(ago)
                    .unwrap_or_else(|| "never".into()),
                n.agent_version.clone().unwrap_or_else(|| "-".into()),
                n.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                // What the agent reports and no approval took yet: what
                // `nodes approve` would approve.
                n.agent_labels_pending
                    .as_ref()
                    .map(joined)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "HOSTNAME",
            "STATE",
            "REACHABLE",
            "LAST SEEN",
            "AGENT",
            "LABELS",
            "LABELS WAITING",
        ],
        &rows,
    );
    let pending = nodes
        .iter()
        .filter(|n| n.state.as_str() == "pending")
        .count();
    if pending > 0 {
        eprintln!(
            "{pending} node(s) wait for approval; to approve them with the labels shown above:"
        );
        for n in nodes
            .iter()
            .filter(|n| n.state.as_str() == "pending")
            .take(10)
        {
            eprintln!(
                "  {}",
                approve_command(&n.hostname, n.reported_agent_labels(), &project, &edge)
            );
        }
    }
    let held = nodes
        .iter()
        .filter(|n| n.state.as_str() != "pending" && n.agent_labels_pending.is_some())
        .count();
    if held > 0 {
        eprintln!(
            "{held} node(s) report labels that wait for approval; to approve what is shown above:"
        );
        for (n, l) in nodes
            .iter()
            .filter(|n| n.state.as_str() != "pending")
            .filter_map(|n| n.agent_labels_pending.as_ref().map(|l| (n, l)))
            .take(10)
        {
            eprintln!("  {}", approve_command(&n.hostname, l, &project, &edge));
        }
    }
    Ok(())
}

/// The command that approves exactly `labels` for `node`: what a hint prints,
/// so that copying it approves what was shown, not what the node reports by then.
fn approve_command(node: &str, labels: &Labels, project: &str, edge: &str) -> String {
    let mut cmd = format!(
        "postern nodes approve {} -p {} -e {}",
        safe(node),
        safe(project),
        safe(edge)
    );
    for (k, v) in labels {
        cmd.push_str(&format!(" --label {}={}", safe(k), safe(v)));
    }
    cmd
}

/// Asks, on a terminal, whether the labels the node reports now are the ones
/// to approve; refuses without one (a script must name them with --label).
fn confirm_labels(node: &str, labels: &Labels, project: &str, edge: &str) -> Result<(), CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    let shown = safe(&joined(labels));
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(CliError::Usage(format!(
            "the agent of {} reports the labels {shown}: name the labels you approve, as you checked them \
             ({}), or approve the node only with --no-labels",
            safe(node),
            approve_command(node, labels, project, edge)
        )));
    }
    eprint!(
        "the agent of {} reports the labels {shown}; approve them? [y/N] ",
        safe(node)
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::Usage(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Usage(
            "nothing approved; name the labels with --label K=V, or use --no-labels".into(),
        ))
    }
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    #[command(flatten)]
    scope: Scope,
    /// How many nodes may join with it
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=postern_api::admin::ENROLL_USES_MAX))]
    uses: i64,
    /// How long it is valid, e.g. 1h or 7d (at most 30d)
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Nodes that join with it are approved at once (otherwise: postern nodes approve)
    #[arg(long)]
    auto_approve: bool,
    /// JSON, as the API answers it (with the token)
    #[arg(long)]
    json: bool,
}

pub async fn join_token(ctx: &Ctx, a: JoinTokenArgs) -> Result<(), CliError> {
    let (project, edge) = ctx.scope(&a.scope).await?;
    let ttl = i64::try_from(a.ttl.as_secs()).unwrap_or(i64::MAX);
    let t = ctx
        .client
        .create_enrollment_token(
            &project,
            &edge,
            &CreateEnrollmentToken {
                ttl_seconds: Some(ttl),
                max_uses: Some(a.uses),
                auto_approve: a.auto_approve,
            },
        )
        .await?;
    if a.json {
        return json(&t);
    }
    crate::outln!(
        "A token for {} node(s) of {}/{}, valid until {}{}. On each node, as root:\n",
        t.max_uses,
        safe(&project),
        safe(&edge),
        safe(&t.expires_at),
        if t.auto_approve {
            ", approved at once"
        } else {
            "; approve each with postern nodes approve NODE"
        }
    );
    match &t.install_command {
        // The package and the join in one line, with the CA pinned.
        Some(line) => {
            crate::outln!("  {}\n", safe(line));
            crate::outln!("(the agent already installed: {})", safe(&t.join_command));
        }
        None => crate::outln!("  {}", safe(&t.join_command)),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    action: Option<UsersCmd>,
    /// JSON, as the API answers it
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum UsersCmd {
    /// Make a user (org admins); give them a role, then a token
    Create { name: String },
    /// Give a user a role on a project (or org_admin on the org); replaces their role there
    Role {
        user: String,
        /// org_admin, project_admin, project_member or read_only
        role: Role,
        /// The project (every role but org_admin)
        #[arg(short, long)]
        project: Option<String>,
        /// A Unix login the role may use over SSH (repeatable)
        #[arg(long = "login", value_name = "LOGIN")]
        logins: Vec<String>,
    },
    /// Make an API token for a bot and print it (once); people sign in instead
    Token {
        user: String,
        /// How long it is valid, e.g. 8h or 30d
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A name to recognize it by
        #[arg(long)]
        name: Option<String>,
    },
}

pub async fn users(ctx: &Ctx, a: UsersArgs) -> Result<(), CliError> {
    match a.action {
        None => {
            let users = ctx.client.users().await?;
            if a.json {
                return json(&users);
            }
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    let roles = u
                        .roles
                        .iter()
                        .map(|r| match &r.project {
                            Some(p) => format!("{}@{p}", r.role),
                            None => r.role.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![u.name.clone(), roles, u.created_at.clone()]
                })
                .collect();
            table(&["USER", "ROLES", "CREATED"], &rows);
            Ok(())
        }
        Some(UsersCmd::Create { name }) => {
            let u = ctx.client.create_user(&name).await?;
            if a.json {
                return json(&u);
            }
            crate::outln!(
                "user {} created; next: postern users role {} project_member -p PROJECT --login root, then postern invitation create {} (or map their SSO group)",
                safe(&u.name),
                safe(&u.name),
                safe(&u.name)
            );
            Ok(())
        }
        Some(UsersCmd::Role {
            user,
            role,
            project,
            logins,
        }) => {
            let u = ctx
                .client
                .set_role(
                    &user,
                    &RoleBinding {
                        role,
                        project,
                        logins,
                        forward_to: Vec::new(),
                        kube_groups: None,
                    },
                )
                .await?;
            if a.json {
                return json(&u);
            }
            crate::outln!("{} now has:", safe(&u.name));
            for r in &u.roles {
                let logins = if r.logins.is_empty() {
                    String::new()
                } else {
                    format!(" (logins: {})", safe(&r.logins.join(", ")))
                };
                crate::outln!(
                    "  {} on {}{logins}",
                    r.role,
                    r.project
                        .as_deref()
                        .map(safe)
                        .unwrap_or_else(|| "the whole org".into())
                );
            }
            Ok(())
        }
        Some(UsersCmd::Token { user, ttl, name }) => {
            let t = ctx
                .client
                .create_token(
                    &user,
                    &CreateToken {
                        name,
                        ttl_seconds: Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
                    },
                )
                .await?;
            if a.json {
                return json(&t);
            }
            eprintln!(
                "a token for {} until {} (shown once; they log in with postern login {}):",
                safe(&user),
                safe(&t.expires_at),
                ctx.client.endpoint().url
            );
            crate::outln!("{}", safe(&t.token));
            Ok(())
        }
    }
}
