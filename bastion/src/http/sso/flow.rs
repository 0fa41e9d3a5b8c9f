//! The browser's round trip to the provider for a waiting CLI (or a
//! headless sign-in's device), the provider's answer, and the CLI's
//! collection of the session.

use super::*;

/// What the bastion keeps, sealed, between the redirect and the callback.
#[derive(Debug, Serialize, Deserialize)]
struct RoundTrip {
    nonce: String,
    pkce_verifier: String,
    /// The CLI's loopback listener.
    #[serde(default)]
    cli_redirect: Option<String>,
    /// The device sign-in this round trip finishes.
    #[serde(default)]
    device_id: Option<String>,
    /// The hash of a secret only the CLI that started the sign-in holds: the
    /// code its listener gets is worth nothing without it (a page that
    /// delivers its own code to the listener, or a code sent elsewhere).
    #[serde(default)]
    cli_challenge: Option<String>,
    /// A console sign-in: the hash of the value of the cookie the browser
    /// that started it got (see `console_start`).
    #[serde(default)]
    console_bind: Option<String>,
}

/// The cookie that ties a console's SSO round trip to the browser that
/// started it: a page elsewhere cannot have someone's browser finish a
/// sign-in it started (and so sign them in to the page's own account). Lax:
/// it must come back on the provider's redirect, a top-level navigation from
/// another site. Over https it is a `__Host-` cookie, which no other host and
/// no plain-http answer can plant.
fn bind_cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-postern_sso_bind"
    } else {
        "postern_sso_bind"
    }
}

/// The `Set-Cookie` value of the binding cookie: `value` for the round
/// trip's length, or cleared.
fn bind_cookie(tls: bool, value: Option<&str>) -> String {
    // `__Host-` needs `Path=/` and `Secure`.
    let (path, secure) = if tls {
        ("/", "; Secure")
    } else {
        ("/api/v1/auth/sso", "")
    };
    format!(
        "{}={}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        bind_cookie_name(tls),
        value.unwrap_or_default(),
        if value.is_some() {
            ROUND_TRIP_MS / 1000
        } else {
            0
        },
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    org: String,
    provider: String,
    cli_redirect: String,
    cli_challenge: String,
}

/// Sign-ins under way for one provider at most: strangers start them, and
/// each is a row for minutes.
pub(super) const MAX_PENDING_PER_PROVIDER: i64 = 10_000;

/// A page for the person in the browser, with its status.
pub(super) fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    (
        status,
        [(http::header::CACHE_CONTROL, "no-store")],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Postern: {t}</title></head>\
             <body><h1>{t}</h1><p id=\"message\">{x}</p></body></html>",
            t = esc(title),
            x = esc(text)
        )),
    )
        .into_response()
}

/// Only a loopback listener of the CLI: `http://127.0.0.1:PORT/…`.
fn cli_redirect_ok(u: &str) -> bool {
    let Some(rest) = u
        .strip_prefix("http://127.0.0.1:")
        .or_else(|| u.strip_prefix("http://[::1]:"))
    else {
        return false;
    };
    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
    u.len() <= 200
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && rest[port.len()..].starts_with('/')
        && !u
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '#')
}

pub(super) async fn provider_named(
    state: &AppState,
    org: &str,
    provider: &str,
) -> Result<OidcProviderRow, ApiError> {
    let unknown = || {
        ApiError::NotFound(format!(
            "no sign-in provider {} in org {}: check the names with your admin",
            validate::peer_line(provider, 64),
            validate::peer_line(org, 64)
        ))
    };
    if validate::name("org", org).is_err() || validate::name("provider", provider).is_err() {
        return Err(unknown());
    }
    let org = state.store.org_by_name(org).await?.ok_or_else(unknown)?;
    state
        .store
        .oidc_provider(&org.id, provider)
        .await?
        .ok_or_else(unknown)
}

async fn relying_party(state: &AppState, p: &OidcProviderRow) -> Result<RelyingParty, ApiError> {
    let secret = String::from_utf8(state.pki.open(&p.client_secret_sealed)?)
        .map_err(|_| ApiError::Internal("a sealed client secret is not text".into()))?;
    Ok(state.sso.relying_party(p, &secret).await?)
}

/// Counts a sign-in started from the caller's address, like a failed one:
/// strangers start these, and each costs a call to the provider.
fn count_start(state: &AppState, anon: &Anonymous) -> Result<(), ApiError> {
    state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now_ms())
        .map(|_| ())
        .ok_or_else(|| {
            IdentityError::TooMany(
                "too many sign-ins started from your address: wait a minute".into(),
            )
            .into()
        })
}

/// Starts a sign-in at the org's provider for the CLI waiting on a loopback
/// port: the browser is sent to the provider.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/start",
    tag = "auth",
    params(
        ("org" = String, Query, description = "The org"),
        ("provider" = String, Query, description = "The org's provider"),
        ("cli_redirect" = String, Query, description = "The CLI's loopback listener, http://127.0.0.1:PORT/callback"),
        ("cli_challenge" = String, Query, description = "base64url(SHA-256(verifier)) of a secret the CLI keeps and sends to /auth/sso/collect"),
    ),
    responses(
        (status = 303, description = "To the provider"),
        (status = 400, description = "A bad or missing parameter", body = ErrorBody),
        (status = 404, description = "No such org or provider", body = ErrorBody),
        (status = 429, description = "Too many sign-ins started from this source, or under way", body = ErrorBody),
        (status = 503, description = "The provider or the database is unavailable; retry", body = ErrorBody),
    ),
)]
pub async fn start(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiQuery(q): ApiQuery<StartQuery>,
) -> Result<Response, ApiError> {
    count_start(&state, &anon)?;
    if !cli_redirect_ok(&q.cli_redirect) {
        return Err(ApiError::BadRequest(
            "cli_redirect must be the CLI's loopback listener, http://127.0.0.1:PORT/…".into(),
        ));
    }
    if q.cli_challenge.len() != 43
        || !q
            .cli_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::BadRequest(
            "cli_challenge must be base64url(SHA-256(verifier)), 43 characters".into(),
        ));
    }
    let provider = provider_named(&state, &q.org, &q.provider).await?;
    round_trip(
        &state,
        &anon,
        &provider,
        RoundTarget::Cli {
            redirect: q.cli_redirect,
            challenge: q.cli_challenge,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleStartQuery {
    org: String,
    provider: String,
}

/// Starts a console sign-in at the org's provider: the browser is sent to
/// the provider, and comes back to the console signed in.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/console",
    tag = "auth",
    params(
        ("org" = String, Query, description = "The org"),
        ("provider" = String, Query, description = "The org's provider"),
    ),
    responses(
        (status = 303, description = "To the provider"),
        (status = 400, description = "A bad or missing parameter", body = ErrorBody),
        (status = 404, description = "No such org or provider", body = ErrorBody),
        (status = 429, description = "Too many sign-ins started from this source, or under way", body = ErrorBody),
        (status = 503, description = "The provider or the database is unavailable; retry", body = ErrorBody),
    ),
)]
pub async fn console_start(
    State(state): State<AppState>,
    anon: Anonymous,
    headers: http::HeaderMap,
    ApiQuery(q): ApiQuery<ConsoleStartQuery>,
) -> Result<Response, ApiError> {
    count_start(&state, &anon)?;
    let provider = provider_named(&state, &q.org, &q.provider).await?;
    let bind = hex::encode(random_bytes::<24>()?);
    let mut resp = round_trip(
        &state,
        &anon,
        &provider,
        RoundTarget::Console(sha256_hex(bind.as_bytes())),
    )
    .await?;
    let tls = crate::http::console::session::over_tls(
        &state.settings.trusted_proxies,
        &headers,
        anon.peer,
    );
    if let Ok(v) = http::HeaderValue::from_str(&bind_cookie(tls, Some(&bind))) {
        resp.headers_mut().append(http::header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Where a round trip's session goes.
pub(super) enum RoundTarget {
    Cli {
        redirect: String,
        challenge: String,
    },
    Device(String),
    /// The console, in the browser whose cookie hashes to this.
    Console(String),
}

/// Records a round trip to `provider` (nonce, PKCE verifier, target) and
/// sends the browser there.
pub(super) async fn round_trip(
    state: &AppState,
    anon: &Anonymous,
    provider: &OidcProviderRow,
    target: RoundTarget,
) -> Result<Response, ApiError> {
    let now = now_ms();
    if state.store.pending_logins_open(&provider.id, now).await? >= MAX_PENDING_PER_PROVIDER {
        return Err(IdentityError::TooMany(
            "too many sign-ins are under way with this provider: retry in a minute".into(),
        )
        .into());
    }
    let rp = relying_party(state, provider).await?;
    let s = rp.start(&provider.scopes);
    let (cli_redirect, cli_challenge, device_id, console_bind) = match target {
        RoundTarget::Cli {
            redirect,
            challenge,
        } => (Some(redirect), Some(challenge), None, None),
        RoundTarget::Device(id) => (None, None, Some(id), None),
        RoundTarget::Console(bind) => (None, None, None, Some(bind)),
    };
    let trip = RoundTrip {
        nonce: s.nonce,
        pkce_verifier: s.pkce_verifier,
        cli_redirect,
        device_id,
        cli_challenge,
        console_bind,
    };
    let sealed = state
        .pki
        .seal(&serde_json::to_vec(&trip).unwrap_or_default())?;
    state
        .store
        .insert_pending_login(
            "sso",
            Some(&provider.org_id),
            Some(&provider.id),
            Some(&sha256_hex(s.state.as_bytes())),
            None,
            None,
            &sealed,
            now,
            now + ROUND_TRIP_MS,
        )
        .await?;
    anon.audit.with(|a| {
        a.org_id = Some(provider.org_id.clone());
        a.detail = Some(json!({ "provider": provider.name, "device": trip.device_id.is_some() }));
    });
    Ok(Redirect::to(&s.url).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    #[allow(dead_code)]
    iss: Option<String>,
    #[allow(dead_code)]
    session_state: Option<String>,
}

/// The provider's answer: verified, the person admitted (or told why not),
/// and the session handed to the CLI.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/callback",
    tag = "auth",
    params(
        ("code" = Option<String>, Query, description = "From the provider"),
        ("state" = Option<String>, Query, description = "From the provider"),
    ),
    responses(
        (status = 303, description = "To the CLI's loopback listener with a one-time code"),
        (status = 200, description = "A headless sign-in is done: a page says to go back to the terminal"),
        (status = 400, description = "A replayed, unknown or expired state, or the provider refused", body = ErrorBody),
        (status = 401, description = "The person is not admitted (the page says why)"),
    ),
)]
pub async fn callback(
    State(state): State<AppState>,
    anon: Anonymous,
    headers: http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    // Whether the browser came over https (the console's cookies' names).
    let tls = crate::http::console::session::over_tls(
        &state.settings.trusted_proxies,
        &headers,
        anon.peer,
    );
    let refused = |why: String| {
        anon.audit
            .with(|a| a.detail = Some(json!({ "reason": why })));
        page(StatusCode::UNAUTHORIZED, "Sign-in refused", &why)
    };
    let Some(st) = q.state.as_deref().filter(|s| s.len() <= 256) else {
        return Ok(refused(
            "the provider's answer has no state: start again with postern login".into(),
        ));
    };
    let Some(pending) = state
        .store
        .claim_pending_by_state(&sha256_hex(st.as_bytes()), now)
        .await?
    else {
        return Ok(refused(
            "this sign-in is unknown, was used already or has expired: start again with postern login".into(),
        ));
    };
    let trip: RoundTrip = match state
        .pki
        .open(&pending.sealed)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(t) => t,
        None => {
            return Err(ApiError::Internal(
                "a pending sign-in could not be read".into(),
            ));
        }
    };
    let provider = state
        .store
        .oidc_provider_by_id(pending.provider_id.as_deref().unwrap_or_default())
        .await?
        .ok_or_else(|| ApiError::NotFound("the provider of this sign-in is gone".into()))?;
    anon.audit
        .with(|a| a.org_id = Some(provider.org_id.clone()));
    // From here a refusal also goes back to a waiting CLI, which says why and
    // stops waiting.
    let cli = trip.cli_redirect.clone();
    let refused = |why: String| -> Response {
        let shown = refused(why.clone());
        match &cli {
            Some(c) => {
                let sep = if c.contains('?') { '&' } else { '?' };
                let why = validate::peer_line(&why, 300);
                let q = serde_urlencoded::to_string([("error", why.as_str())]).unwrap_or_default();
                Redirect::to(&format!("{c}{sep}{q}")).into_response()
            }
            None => shown,
        }
    };
    if let Some(bind) = &trip.console_bind {
        let presented =
            crate::http::console::session::cookie(&headers, &[bind_cookie_name(tls)], 128)
                .map(|c| sha256_hex(c.as_bytes()));
        if presented.as_deref() != Some(bind.as_str()) {
            return Ok(refused(
                "this sign-in was started in another browser (or its cookie expired): start again from the console".into(),
            ));
        }
    }
    if let Some(e) = &q.error {
        return Ok(refused(format!(
            "{} refused: {} {}",
            provider.name,
            validate::peer_line(e, 100),
            validate::peer_line(q.error_description.as_deref().unwrap_or_default(), 200)
        )));
    }
    let Some(code) = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 2048)
    else {
        return Ok(refused("the provider's answer has no code".into()));
    };
    let mut rp = relying_party(&state, &provider).await?;
    let who = match rp.finish(code, &trip.pkce_verifier, &trip.nonce).await {
        Ok(w) => w,
        Err(e) => return Ok(refused(e.to_string())),
    };
    // A refreshed JWKS serves the next sign-ins too.
    state.sso.keep(&provider, rp);
    let source = anon.source.map(|s| s.to_string());
    let (user, session, detail) = match crate::identity::sso::admit(
        &state,
        &provider,
        &who,
        source.as_deref(),
        trip.console_bind
            .is_some()
            .then_some(postern_api::console::MAX_CONSOLE_SECONDS),
    )
    .await
    {
        Ok(x) => x,
        Err(IdentityError::Refused(why)) => {
            let out = refused(why.clone());
            anon.audit.with(|a| {
                    // The provider's word, marked as such: not one of our users.
                a.actor = who
                    .preferred_username
                    .as_deref()
                    .or(who.email.as_deref())
                    .map(|n| format!("{}:{}", provider.name, validate::peer_line(n, 64)));
                    a.detail = Some(json!({ "reason": why, "provider": provider.name, "groups": who.groups.iter().take(64).collect::<Vec<_>>(), "amr": who.amr }));
                });
            return Ok(out);
        }
        Err(e) => return Err(e.into()),
    };
    let org = state.store.org_name(&user.org_id).await?;
    let created = SessionCreated {
        id: session.row.id.clone(),
        token: session.token.expose().to_string(),
        user: user.name.clone(),
        org,
        method: session.row.method.clone(),
        mfa: session.row.mfa,
        expires_at: rfc3339(session.row.expires_at),
        ssh_certificate: None,
        recovery_codes_left: None,
    };
    let sealed = state
        .pki
        .seal(&serde_json::to_vec(&created).unwrap_or_default())?;
    anon.audit.with(|a| {
        a.actor = Some(user.name.clone());
        a.detail = Some(detail);
    });
    if let Some(device_id) = &trip.device_id {
        if !state
            .store
            .finish_device_login(device_id, &sealed, now)
            .await?
        {
            return Ok(refused(
                "this headless sign-in expired or was finished already".into(),
            ));
        }
        return Ok(page(
            StatusCode::OK,
            "Signed in",
            &format!("Signed in as {}. Go back to your terminal.", user.name),
        ));
    }
    if trip.console_bind.is_some() {
        crate::http::console::session::open(&state, &session.row, now_ms()).await?;
        let mut resp = Redirect::to("/").into_response();
        let cookies = [
            crate::http::console::session::set_cookie(
                Some(session.token.expose()),
                session.row.expires_at,
                tls,
            ),
            bind_cookie(tls, None),
        ];
        for c in cookies {
            if let Ok(v) = http::HeaderValue::from_str(&c) {
                resp.headers_mut().append(http::header::SET_COOKIE, v);
            }
        }
        return Ok(resp);
    }
    let (Some(cli), Some(challenge)) = (trip.cli_redirect, trip.cli_challenge) else {
        return Err(ApiError::Internal("a sign-in with nowhere to go".into()));
    };
    let secret = hex::encode(random_bytes::<24>()?);
    // Collected with the code and the CLI's verifier both (see `collect`).
    if !state
        .store
        .finish_sso_login(
            &pending.id,
            &sha256_hex(format!("{secret}:{challenge}").as_bytes()),
            &sealed,
            now,
        )
        .await?
    {
        return Ok(refused("this sign-in was finished already".into()));
    }
    let sep = if cli.contains('?') { '&' } else { '?' };
    Ok(Redirect::to(&format!("{cli}{sep}code={}_{secret}", pending.id)).into_response())
}

/// Collects a finished sign-in's session, once: the code from the loopback
/// redirect, or a headless sign-in's poll code (`pending` until the person
/// has signed in).
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/collect",
    tag = "auth",
    request_body = Collect,
    responses(
        (status = 200, description = "`pending`, or `done` with the session (shown only now)", body = Collected),
        (status = 400, description = "Malformed JSON, an unknown field, or an invalid value", body = ErrorBody),
        (status = 401, description = "Unknown, expired or collected already", body = ErrorBody),
        (status = 413, description = "Body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "Body not sent with `Content-Type: application/json`", body = ErrorBody),
        (status = 429, description = "Too many bad codes from this source", body = ErrorBody),
    ),
)]
pub async fn collect(
    State(state): State<AppState>,
    anon: Anonymous,
    ApiJson(body): ApiJson<Collect>,
) -> Result<Json<Collected>, ApiError> {
    let now = now_ms();
    let attempt = state
        .sign_in_attempts
        .begin(anon.source_or_local(), None, now)
        .ok_or_else(|| {
            IdentityError::TooMany("too many bad codes from your address: wait a minute".into())
        })?;
    let bad = || {
        ApiError::Unauthorized(
            "this sign-in code is unknown, expired or was used: run postern login again".into(),
        )
    };
    let (id, secret) = body
        .code
        .trim()
        .split_once('_')
        .filter(|(i, s)| i.len() <= 64 && s.len() <= 128)
        .ok_or_else(bad)?;
    let p: PendingLogin = state.store.pending_by_id(id).await?.ok_or_else(bad)?;
    // A loopback sign-in's code goes with the verifier of the challenge its
    // CLI sent to `start`; a device code's poll secret stands alone (only
    // the CLI that asked for it holds it).
    let presented = match (p.kind.as_str(), &body.verifier) {
        ("sso", Some(v)) if v.len() <= 128 => {
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(ring::digest::digest(&ring::digest::SHA256, v.as_bytes()));
            format!("{secret}:{challenge}")
        }
        ("device", None) => secret.to_string(),
        _ => return Err(bad()),
    };
    let matches = p
        .poll_hash
        .as_deref()
        .is_some_and(|h| crate::secrets::secret_matches(&presented, h));
    if !matches {
        return Err(bad());
    }
    // The right secret: polling is no guessing.
    attempt.succeeded();
    if p.session_sealed.is_none() {
        if p.kind == "device" && p.finished_at.is_none() && p.expires_at > now {
            return Ok(Json(Collected {
                status: "pending".into(),
                session: None,
            }));
        }
        return Err(bad());
    }
    let sealed = state
        .store
        .collect_device_login(id)
        .await?
        .ok_or_else(bad)?;
    let session: SessionCreated = state
        .pki
        .open(&sealed)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::Internal("a finished sign-in could not be read".into()))?;
    anon.audit.with(|a| {
        a.actor = Some(session.user.clone());
        a.org_id = p.org_id.clone();
        a.detail = Some(json!({ "session_id": session.id, "kind": p.kind }));
    });
    Ok(Json(Collected {
        status: "done".into(),
        session: Some(session),
    }))
}
