//! The OpenAPI document of the whole REST API (admin, users, SSH keys, audit,
//! cmdexec, and the operational endpoints), and Swagger UI (vendored assets, so it
//! works on a bastion without internet access).

use postern_api::ErrorBody;
use postern_api::admin::{
    AuditEntry, AuditPage, CreateEdge, CreateEnrollmentToken, CreateProject, CreateToken,
    CreateUser, Edge, EnrollmentTokenCreated, Node, NodeState, Project, Role, RoleBinding,
    TokenCreated, TokenInfo, User,
};
use postern_api::ssh::{AddSshKey, SshEndpoint, SshKey};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{
    admin, auth, bots, cmdexec, console, exec_events, kubeconfig, nodes, ops, recordings, ssh_keys,
    sso, users,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Postern API",
        description = "The bastion's REST API. `/api/v1`: projects, edges and nodes (approve, disable, \
                       enable, delete, grant the Kubernetes gateway role), enrollment tokens, users and their roles, API tokens and SSH keys, \
                       session recordings and their policy, and the audit log. `/cmdexec/v1`: send commands or whole scripts to nodes or \
                       clusters (by name, or by label selector), with rate control (max_concurrency, max_errors) and \
                       Idempotency-Key; poll their results, follow their live output as server-sent events, \
                       cancel them, list history. Authenticate with \
                       `Authorization: Bearer pss_…` (a session from `POST /api/v1/auth/login` or `postern login`) or a bot's `pst_…` token. Errors are JSON: `{\"error\": {\"code\", \"message\"}}`. \
                       Every call is audited; a change the audit log cannot record is refused with 503.",
    ),
    paths(
        users::whoami,
        admin::list_projects,
        admin::create_project,
        admin::get_project,
        admin::list_edges,
        admin::create_edge,
        nodes::list_nodes,
        nodes::get_node,
        nodes::delete_node,
        nodes::approve_node,
        nodes::set_node_labels,
        nodes::disable_node,
        nodes::enable_node,
        nodes::grant_kube_gateway,
        nodes::revoke_kube_gateway,
        admin::create_enrollment_token,
        admin::revoke_enrollment_token,
        users::list_users,
        users::create_user,
        users::get_user,
        users::delete_user,
        users::set_role,
        users::remove_role,
        users::list_tokens,
        users::create_token,
        users::revoke_token,
        ssh_keys::list,
        ssh_keys::add,
        ssh_keys::delete,
        admin::audit_page,
        kubeconfig::kubeconfig,
        ssh_keys::endpoint,
        cmdexec::execute,
        cmdexec::execution,
        cmdexec::history,
        exec_events::events,
        exec_events::cancel,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        auth::login,
        auth::logout,
        auth::ssh_certificate,
        auth::kube_certificate,
        auth::create_invitation,
        auth::accept_invitation,
        auth::list_sessions,
        auth::end_sessions,
        auth::reset_mfa,
        auth::disable_user,
        auth::enable_user,
        auth::get_policy,
        auth::put_policy,
        bots::create_bot,
        bots::list_bots,
        bots::delete_bot,
        sso::put_provider,
        sso::list_providers,
        sso::delete_provider,
        sso::list_groups,
        sso::put_group_role,
        sso::delete_group_role,
        sso::start,
        sso::console_start,
        admin::audit_verify,
        console::sign_in,
        console::current,
        console::terminal::open,
        sso::callback,
        sso::device,
        sso::device_page,
        sso::device_confirm,
        sso::device_approve,
        sso::collect,
        recordings::get_policy,
        recordings::put_policy,
        recordings::list,
        recordings::get,
        recordings::segments,
        recordings::cast,
        recordings::live,
        recordings::get_retention,
        recordings::put_retention,
        recordings::delete,
    ),
    components(schemas(
        ErrorBody,
        Project,
        CreateProject,
        Edge,
        CreateEdge,
        Node,
        NodeState,
        CreateEnrollmentToken,
        EnrollmentTokenCreated,
        User,
        CreateUser,
        Role,
        RoleBinding,
        CreateToken,
        TokenCreated,
        TokenInfo,
        AddSshKey,
        SshKey,
        SshEndpoint,
        AuditEntry,
        AuditPage,
        postern_api::kube_keys::NodeKubeKeys,
        postern_api::kube_keys::KubeNodeKey,
        postern_api::kube_keys::RejectedLine,
        postern_api::admin::SetNodeLabels,
        postern_api::admin::NodeKubeGateway,
        postern_api::admin::ApproveNode,
        postern_api::cmdexec::ExecEvent,
        postern_api::cmdexec::ExecEventFrame,
        postern_api::cmdexec::OutputStream,
        postern_api::cmdexec::CancelResponse,
        postern_api::recordings::RecordingLevel,
        postern_api::recordings::RecordingPolicy,
        postern_api::recordings::RecordingRetention,
        postern_api::recordings::LabelRule,
        postern_api::recordings::RecordingView,
        postern_api::recordings::RecordingPage,
        postern_api::recordings::Segment,
        postern_api::recordings::SegmentList,
        postern_api::identity::Login,
        postern_api::identity::SessionCreated,
        postern_api::identity::CertifyKey,
        postern_api::identity::SshCertificate,
        postern_api::identity::CreateInvitation,
        postern_api::identity::InvitationCreated,
        postern_api::identity::AcceptInvitation,
        postern_api::identity::InvitationAccepted,
        postern_api::identity::OrgPolicy,
        postern_api::identity::SessionInfo,
        postern_api::identity::KubeCsr,
        postern_api::identity::KubeCertificate,
        postern_api::identity::CreateBot,
        postern_api::identity::Bot,
        postern_api::identity::PutOidcProvider,
        postern_api::identity::OidcProvider,
        postern_api::identity::GroupRole,
        postern_api::identity::StartDevice,
        postern_api::identity::DeviceStarted,
        postern_api::identity::Collect,
        postern_api::identity::Collected,
        postern_api::console::ConsoleLogin,
        postern_api::admin::AuditVerified,
        postern_api::console::ConsoleSession,
        postern_api::console::TerminalControl,
    )),
    modifiers(&Bearer),
    tags(
        (name = "auth", description = "Signing in (password and TOTP), sessions, SSH certificates, invitations and the org's sign-in policy"),
        (name = "sso", description = "Single sign-on: the org's OpenID providers and the roles their groups grant"),
        (name = "admin", description = "Projects, edges, nodes and enrollment tokens"),
        (name = "users", description = "Users, their roles, and API tokens"),
        (name = "ssh-keys", description = "Users' SSH public keys"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "cmdexec", description = "Remote commands on nodes and clusters"),
        (name = "kubernetes", description = "kubectl and helm through the bastion"),
        (name = "console", description = "The web console's browser terminal (its pages use the rest of this API)"),
        (name = "ops", description = "Liveness, readiness and metrics; no token needed"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("pst_…")
                    .build(),
            ),
        );
    }
}

pub fn swagger() -> SwaggerUi {
    SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", ApiDoc::openapi())
}
