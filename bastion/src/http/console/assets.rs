//! The console's files, built from `console/` by `npm run build` (Vite) into
//! `console/dist` and embedded here at compile time: a bastion in an air gap
//! serves its console with nothing fetched at run time. `scripts/test` checks
//! that the committed build is what the sources and the lockfile build.
//!
//! Every answer carries a Content-Security-Policy that lets the page load
//! only this origin's scripts (no inline script, no eval), connect only to
//! this origin, and not be framed.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use include_dir::{Dir, include_dir};

static DIST: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../console/dist");

/// The policy of every console page. Styles may be inline: the terminal
/// (xterm.js) sizes its rows with style attributes; scripts may not.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, cache: &'static str) -> Response {
    match DIST.get_file(path) {
        Some(f) => (
            [
                (CONTENT_TYPE, content_type(path)),
                (CACHE_CONTROL, cache),
                (CONTENT_SECURITY_POLICY, CSP),
                (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (http::header::X_FRAME_OPTIONS, "DENY"),
                (http::header::REFERRER_POLICY, "no-referrer"),
            ],
            f.contents(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_SECURITY_POLICY, CSP)],
            "no such file in the console",
        )
            .into_response(),
    }
}

/// The console's page (its routes are after the `#`, so this is the only
/// page there is).
pub async fn index() -> Response {
    serve("index.html", "no-cache")
}

/// A built asset: its name carries its content's hash, so it never changes.
pub async fn asset(Path(path): Path<String>) -> Response {
    if path.len() > 200 || path.contains("..") {
        return serve("", "no-store");
    }
    serve(
        &format!("assets/{path}"),
        "public, max-age=31536000, immutable",
    )
}

/// Files at the top of the build (the icon).
pub async fn favicon() -> Response {
    serve("favicon.svg", "public, max-age=86400")
}
