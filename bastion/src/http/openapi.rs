//! The OpenAPI document of the cmdexec API, and Swagger UI (vendored assets, so it
//! works on a bastion without internet access).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::cmdexec;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Postern cmdexec API",
        description = "Send commands or whole scripts to nodes or clusters, poll their results, list history. \
                       Authenticate with `Authorization: Bearer pst_…`.",
    ),
    paths(cmdexec::execute, cmdexec::execution, cmdexec::history),
    modifiers(&Bearer),
    tags((name = "cmdexec", description = "Remote commands on nodes and clusters"))
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
