//! A headless sign-in: its start (a code for the CLI to show), and the
//! pages on which a person types the code and confirms what it approves.

use super::flow::{MAX_PENDING_PER_PROVIDER, RoundTarget, page, provider_named, round_trip};
use super::*;

fn user_code() -> Result<String, ApiError> {
    let raw = random_bytes::<8>()?;
    let c: String = raw
        .iter()
        .map(|b| USER_CODE_ALPHABET[*b as usize % USER_CODE_ALPHABET.len()] as char)
        .collect();
    Ok(format!("{}-{}", &c[..4], &c[4..]))
}

/// Starts a headless sign-in: a URL and a short code to open on any device,
/// and a secret with which the CLI collects the session.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/device",
    tag = "auth",
    request_body = StartDevice,
    responses(
        (status = 201, description = "Open the URL anywhere and type the code; poll /auth/sso/collect", body = DeviceStarted),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 404, description = "No such org or provider", body = ErrorBody),
        (status = 429, description = "Too many sign-ins started from this source, or under way", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
    ),
)]
pub async fn device(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiJson(body): ApiJson<StartDevice>,
) -> Result<(StatusCode, Json<DeviceStarted>), ApiError> {
    let now = now_ms();
    state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now)
        .ok_or_else(|| {
            IdentityError::TooMany(
                "too many sign-ins started from your address: wait a minute".into(),
            )
        })?;
    let p = provider_named(&state, &body.org, &body.provider).await?;
    if state.store.pending_logins_open(&p.id, now).await? >= MAX_PENDING_PER_PROVIDER {
        return Err(IdentityError::TooMany(
            "too many sign-ins are under way with this provider: retry in a minute".into(),
        )
        .into());
    }
    // Shown to whoever approves the code: where the request came from.
    let asked = state.pki.seal(
        &serde_json::to_vec(&json!({ "source": anon.source.map(|s| s.to_string()) }))
            .unwrap_or_default(),
    )?;
    let secret = hex::encode(random_bytes::<24>()?);
    let mut code = user_code()?;
    let mut id = None;
    for _ in 0..3 {
        match state
            .store
            .insert_pending_login(
                "device",
                Some(&p.org_id),
                Some(&p.id),
                None,
                Some(&code),
                Some(&sha256_hex(secret.as_bytes())),
                &asked,
                now,
                now + DEVICE_MS,
            )
            .await
        {
            Ok(i) => {
                id = Some(i);
                break;
            }
            Err(crate::store::StoreError::Conflict(_)) => code = user_code()?,
            Err(e) => return Err(e.into()),
        }
    }
    let id = id.ok_or_else(|| ApiError::Internal("no free device code".into()))?;
    let origin = p
        .redirect_url
        .strip_suffix(&format!(
            "{}{}",
            postern_api::routes::API,
            postern_api::routes::AUTH_SSO_CALLBACK
        ))
        .unwrap_or(&p.redirect_url)
        .to_string();
    anon.audit.with(|a| {
        a.org_id = Some(p.org_id.clone());
        a.detail = Some(json!({ "provider": p.name, "user_code": code }));
    });
    Ok((
        StatusCode::CREATED,
        Json(DeviceStarted {
            // The code is typed, never carried by the link: a link alone
            // approves nothing.
            verification_url: format!(
                "{origin}{}{}",
                postern_api::routes::API,
                postern_api::routes::AUTH_SSO_DEVICE
            ),
            user_code: code,
            poll_code: format!("{id}_{secret}"),
            expires_in: DEVICE_MS / 1000,
            interval: 2,
        }),
    ))
}

/// The cookie that ties the device pages' forms to the browser that loaded
/// them: `SameSite=Strict`, so a page elsewhere cannot post them for a
/// visitor (and push their sign-in into someone else's device request).
const CSRF_COOKIE: &str = "postern_sso_csrf";

fn csrf_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == CSRF_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page with a form, and the CSRF cookie its form carries.
fn form_page(title: &str, body: &str, csrf: &str) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(http::header::CACHE_CONTROL, "no-store")],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Postern: {t}</title></head>\
             <body><h1>{t}</h1>{body}</body></html>",
            t = esc(title)
        )),
    )
        .into_response();
    let cookie = format!(
        "{CSRF_COOKIE}={csrf}; Path={}{}; HttpOnly; SameSite=Strict; Max-Age=900",
        postern_api::routes::API,
        "/auth/sso"
    );
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    resp
}

/// The headless sign-in page: type the code your terminal shows.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/device",
    tag = "auth",
    responses((status = 200, description = "A page with a form for the code", content_type = "text/html")),
)]
pub async fn device_page() -> Result<Response, ApiError> {
    let csrf = hex::encode(random_bytes::<32>()?);
    Ok(form_page(
        "Sign in a device",
        &format!(
            "<p>Type the code that <code>postern login --headless</code> shows in your terminal.</p>\
             <form method=\"post\" action=\"{api}/auth/sso/device/confirm\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"text\" name=\"code\" autofocus autocomplete=\"off\" placeholder=\"ABCD-EFGH\">\
             <button type=\"submit\">Next</button></form>",
            api = postern_api::routes::API
        ),
        &csrf,
    ))
}

#[derive(Debug, Deserialize)]
struct DeviceForm {
    code: String,
    csrf: String,
}

/// The form's fields, once its CSRF field matches the browser's cookie; else
/// what to tell the person.
fn device_form(headers: &http::HeaderMap, body: &[u8]) -> Result<DeviceForm, &'static str> {
    let form: DeviceForm = serde_urlencoded::from_bytes(body)
        .map_err(|_| "This form is incomplete: open the sign-in page again.")?;
    match csrf_of(headers) {
        Some(c) if crate::secrets::secret_matches(&form.csrf, &sha256_hex(c.as_bytes())) => {
            Ok(form)
        }
        _ => Err(
            "This form did not come from this browser's sign-in page: open the sign-in page again and type the code there.",
        ),
    }
}

/// The device request a code names, while it waits; a page otherwise.
async fn waiting_device(
    state: &AppState,
    anon: &Anonymous,
    code: &str,
) -> Result<Result<PendingLogin, Response>, ApiError> {
    let now = now_ms();
    let Some(attempt) = state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now)
    else {
        return Ok(Err(page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many tries",
            "Too many wrong codes from your address: wait a minute.",
        )));
    };
    let code = code.trim().to_ascii_uppercase();
    let found = if code.len() <= 16 {
        state.store.pending_by_user_code(&code).await?
    } else {
        None
    };
    match found.filter(|d| d.kind == "device" && d.finished_at.is_none() && d.expires_at > now) {
        Some(d) => {
            attempt.succeeded();
            Ok(Ok(d))
        }
        None => Ok(Err(page(
            StatusCode::NOT_FOUND,
            "Unknown code",
            "This code is unknown or has expired: check it, or run postern login --headless again.",
        ))),
    }
}

/// Step two: what the code would approve, said plainly, before anything
/// happens.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/device/confirm",
    tag = "auth",
    responses(
        (status = 200, description = "A page naming the org, the provider and where the request came from, with a Continue button", content_type = "text/html"),
        (status = 400, description = "A form without this browser's CSRF cookie", content_type = "text/html"),
        (status = 404, description = "An unknown or expired code", content_type = "text/html"),
    ),
)]
pub async fn device_confirm(
    State(state): State<AppState>,
    anon: Anonymous,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let form = match device_form(&headers, &body) {
        Ok(f) => f,
        Err(why) => return Ok(page(StatusCode::BAD_REQUEST, "Start again", why)),
    };
    let device = match waiting_device(&state, &anon, &form.code).await? {
        Ok(d) => d,
        Err(p) => return Ok(p),
    };
    let provider = state
        .store
        .oidc_provider_by_id(device.provider_id.as_deref().unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::NotFound("the provider of this code is gone".into()))?;
    let org = state
        .store
        .org_by_id(&provider.org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    let asked_from = state
        .pki
        .open(&device.sealed)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["source"].as_str().map(str::to_string))
        .unwrap_or_else(|| "an unknown address".into());
    let age = (now_ms() - device.expires_at + DEVICE_MS).max(0) / 1000;
    let csrf = csrf_of(&headers).unwrap_or_default();
    Ok(form_page(
        "Approve this sign-in?",
        &format!(
            "<p id=\"request\">A device asked {age} s ago, from <b>{from}</b>, to sign in to the org <b>{org}</b> \
             with <b>{provider}</b>. Continuing gives <b>that device</b> a session as you.</p>\
             <p>Continue only if you started it yourself, just now, with <code>postern login --headless</code>.</p>\
             <form method=\"post\" action=\"{api}/auth/sso/device/approve\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf_field}\">\
             <input type=\"hidden\" name=\"code\" value=\"{code}\">\
             <button type=\"submit\">Continue to {provider}</button></form>",
            from = esc(&asked_from),
            org = esc(&org),
            provider = esc(&provider.name),
            code = esc(&form.code),
            csrf_field = esc(&form.csrf),
            api = postern_api::routes::API
        ),
        &csrf,
    ))
}

/// Step three: the person confirmed; off to the provider.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/device/approve",
    tag = "auth",
    responses(
        (status = 303, description = "To the provider"),
        (status = 400, description = "A form without this browser's CSRF cookie", content_type = "text/html"),
        (status = 404, description = "An unknown or expired code", content_type = "text/html"),
    ),
)]
pub async fn device_approve(
    State(state): State<AppState>,
    anon: Anonymous,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let form = match device_form(&headers, &body) {
        Ok(f) => f,
        Err(why) => return Ok(page(StatusCode::BAD_REQUEST, "Start again", why)),
    };
    let device = match waiting_device(&state, &anon, &form.code).await? {
        Ok(d) => d,
        Err(p) => return Ok(p),
    };
    let provider = state
        .store
        .oidc_provider_by_id(device.provider_id.as_deref().unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::NotFound("the provider of this code is gone".into()))?;
    round_trip(&state, &anon, &provider, RoundTarget::Device(device.id)).await
}
