//! The OpenID Connect relying party (`openidconnect`, no JOSE of our own):
//! discovery, the authorization code flow with PKCE, `state` and `nonce`, and
//! ID token verification against the issuer's JWKS (`iss`, `aud`, `exp`,
//! `iat` with a bounded clock skew, `nonce`, the signature; `alg: none` is
//! refused). The JWKS is fetched again once when a token names an unknown
//! `kid` (the provider rotated its keys).
//!
//! HTTP to the provider is our own small hyper client: one connection per
//! call (these are rare), no redirects followed, answers bounded to 1 MiB and
//! every call to 10 s, so an unreachable or hostile provider is a clear error,
//! never a hang.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::header::HOST;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AsyncHttpClient, AuthenticationFlow, AuthorizationCode,
    ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdToken,
    IdTokenClaims, IdTokenFields, IdTokenVerifier, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::IdentityError;

/// Clock skew allowed between the bastion and the provider.
pub const MAX_SKEW_SECS: i64 = 60;
/// Longest answer read from a provider.
const MAX_ANSWER: usize = 1 << 20;
/// Longest any call to a provider may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OidcHttpError(String);

fn herr(e: impl std::fmt::Display) -> OidcHttpError {
    OidcHttpError(e.to_string())
}

/// The HTTP client openidconnect calls the provider with.
#[derive(Clone)]
pub struct OidcHttp {
    tls: tokio_rustls::TlsConnector,
    /// Loopback and private addresses, and plain http, allowed.
    private: bool,
}

/// Addresses a provider may not have unless private networks are allowed:
/// the bastion's own host, private and link-local networks (cloud metadata),
/// and what is not routable at all.
fn private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64
                || v.octets()[0] == 0
        }
        std::net::IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(v4) => private(std::net::IpAddr::V4(v4)),
            None => {
                v.is_loopback()
                    || v.is_unspecified()
                    || v.is_multicast()
                    || (v.segments()[0] & 0xfe00) == 0xfc00
                    || (v.segments()[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

impl std::fmt::Debug for OidcHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcHttp")
            .field("private", &self.private)
            .finish()
    }
}

impl OidcHttp {
    /// Public https providers only (see [`OidcHttp::private_networks`]).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> OidcHttp {
        OidcHttp {
            tls: tls.into(),
            private: false,
        }
    }

    /// Allows providers on loopback and private networks, over plain http.
    pub fn private_networks(mut self, allow: bool) -> OidcHttp {
        self.private = allow;
        self
    }

    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, OidcHttpError> {
        tokio::time::timeout(CALL_TIMEOUT, self.send_inner(req))
            .await
            .map_err(|_| herr("the identity provider did not answer within 10 s"))?
    }

    async fn send_inner(&self, req: HttpRequest) -> Result<HttpResponse, OidcHttpError> {
        let (mut parts, body) = req.into_parts();
        let uri = parts.uri.clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.private => false,
            other => {
                return Err(herr(format!(
                    "the identity provider must be reached over https (not {})",
                    other.unwrap_or("no scheme")
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| herr("no host in the provider's URL"))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        parts.uri = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(herr)?;
        parts.version = http::Version::HTTP_11;
        parts.headers.insert(
            HOST,
            HeaderValue::from_str(authority.as_str()).map_err(herr)?,
        );
        let req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        // Resolved once and checked, then dialled by address: a name that
        // resolves elsewhere on the second lookup gets nowhere.
        let unreachable = || herr("cannot reach the identity provider");
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| unreachable())?
            .collect();
        if !self.private && addrs.iter().any(|a| private(a.ip())) {
            return Err(herr(
                "the identity provider resolves to a private or loopback address, which this bastion does not call (see --sso-allow-private-networks)",
            ));
        }
        let addr = *addrs.first().ok_or_else(unreachable)?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|_| unreachable())?;
        if https {
            let name = rustls_pki_types::ServerName::try_from(host).map_err(herr)?;
            let tls = self.tls.connect(name, tcp).await.map_err(herr)?;
            roundtrip(TokioIo::new(tls), req).await
        } else {
            roundtrip(TokioIo::new(tcp), req).await
        }
    }
}

async fn roundtrip<I>(io: I, req: http::Request<Full<Bytes>>) -> Result<HttpResponse, OidcHttpError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(herr)?;
    // Owned here and awaited below: ends when `sender` is dropped.
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(herr)?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(herr)?
        .to_bytes();
    drop(sender);
    let _ = conn.await;
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

impl<'c> AsyncHttpClient<'c> for OidcHttp {
    type Error = OidcHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, OidcHttpError>> + Send + 'c>>;
    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// Claims beyond the standard ones: the groups (read from the provider's
/// configured claim, `groups` by default) and `acr`/`amr` are in the rest.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}
impl AdditionalClaims for ExtraClaims {}

pub type PosternIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
pub type PosternIdTokenClaims = IdTokenClaims<ExtraClaims, CoreGenderClaim>;
type PosternTokenResponse = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;
type PosternClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    PosternTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asserted {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub preferred_username: Option<String>,
    pub groups: Vec<String>,
    /// `amr` values and `acr`, as the provider sent them.
    pub amr: Vec<String>,
    pub acr: Option<String>,
}

/// A relying party for one provider, from its discovery document.
#[derive(Debug, Clone)]
pub struct RelyingParty {
    http: OidcHttp,
    metadata: CoreProviderMetadata,
    client_id: ClientId,
    secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    groups_claim: String,
}

/// What the bastion keeps between the redirect and the callback.
#[derive(Debug, Serialize, Deserialize)]
pub struct Started {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// An error with its causes (openidconnect says "Request failed" and keeps
/// the reason in its source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

fn rp_err(what: &str, e: impl std::error::Error) -> IdentityError {
    IdentityError::Refused(format!("{what}: {}", chain(&e)))
}

impl RelyingParty {
    /// Reads the provider's discovery document.
    pub async fn discover(
        http: OidcHttp,
        issuer: &str,
        client_id: &str,
        client_secret: Option<&str>,
        redirect: &str,
        groups_claim: &str,
    ) -> Result<RelyingParty, IdentityError> {
        let issuer_url = IssuerUrl::new(issuer.to_owned())
            .map_err(|e| IdentityError::Invalid(format!("issuer {issuer:?}: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer_url, &http)
            .await
            .map_err(|e| {
                IdentityError::Refused(format!(
                    "the identity provider {issuer} could not be read ({}); check that it is up and its issuer URL, then try again",
                    chain(&e)
                ))
            })?;
        Ok(RelyingParty {
            http,
            metadata,
            client_id: ClientId::new(client_id.to_owned()),
            secret: client_secret.map(|s| ClientSecret::new(s.to_owned())),
            redirect: RedirectUrl::new(redirect.to_owned())
                .map_err(|e| IdentityError::Invalid(format!("redirect URL: {e}")))?,
            groups_claim: groups_claim.to_owned(),
        })
    }

    fn client(&self) -> PosternClient {
        PosternClient::from_provider_metadata(
            self.metadata.clone(),
            self.client_id.clone(),
            self.secret.clone(),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// The provider's authorization URL for a new sign-in, and what must be
    /// kept for its callback.
    pub fn start(&self, scopes: &[String]) -> Started {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client();
        let mut req = client.authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in scopes.iter().filter(|s| s.as_str() != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Started {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        }
    }

    /// Exchanges the code and verifies the ID token (fetching the JWKS again
    /// once for a key it does not know).
    pub async fn finish(
        &mut self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Asserted, IdentityError> {
        let client = self.client();
        let token: PosternTokenResponse = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| rp_err("the provider names no token endpoint", e))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| rp_err("the provider refused the code", e))?;
        let id_token = token
            .id_token()
            .ok_or_else(|| IdentityError::Refused("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(nonce.to_owned());
        let first = id_token
            .claims(&verifier(client.id_token_verifier()), &nonce)
            .map(|c| asserted(c, &self.groups_claim));
        match first {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let jwks = CoreJsonWebKeySet::fetch_async(self.metadata.jwks_uri(), &self.http)
                    .await
                    .map_err(|e| rp_err("cannot read the provider's keys", e))?;
                self.metadata = self.metadata.clone().set_jwks(jwks);
                let client = self.client();
                id_token
                    .claims(&verifier(client.id_token_verifier()), &nonce)
                    .map(|c| asserted(c, &self.groups_claim))
                    .map_err(|e| rp_err("the ID token was refused", e))
            }
            other => other.map_err(|e| rp_err("the ID token was refused", e)),
        }
    }
}

/// The asymmetric algorithms an ID token may be signed with. Never HS256: the
/// provider's discovery may list it, and its key would be our client secret.
const ALGS: [CoreJwsSigningAlgorithm; 6] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// The skew rules: `exp` is checked against now minus the skew, and `iat`
/// may not be later than now plus the skew (openidconnect checks neither
/// with a skew by itself); and only [`ALGS`].
fn verifier(v: IdTokenVerifier<'_, CoreJsonWebKey>) -> IdTokenVerifier<'_, CoreJsonWebKey> {
    let skew = chrono::Duration::seconds(MAX_SKEW_SECS);
    v.set_allowed_algs(ALGS)
        .set_time_fn(move || chrono::Utc::now() - skew)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > chrono::Utc::now() + skew {
                Err(format!("issued in the future ({iat})"))
            } else {
                Ok(())
            }
        })
}

fn asserted(c: &PosternIdTokenClaims, groups_claim: &str) -> Asserted {
    let other = &c.additional_claims().other;
    let groups = match other.get(groups_claim) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str())
            .filter(|g| !g.is_empty() && g.len() <= 256)
            .take(256)
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::String(g)) if g.len() <= 256 => vec![g.clone()],
        _ => Vec::new(),
    };
    Asserted {
        subject: c.subject().to_string(),
        email: c.email().map(|e| e.to_string()),
        email_verified: c.email_verified(),
        preferred_username: c.preferred_username().map(|u| u.to_string()),
        groups,
        amr: c
            .auth_method_refs()
            .map(|v| v.iter().map(|a| a.to_string()).take(32).collect())
            .unwrap_or_default(),
        acr: c.auth_context_ref().map(|a| a.to_string()),
    }
}

/// Verifies a raw ID token against a JWKS, for `issuer` and `client_id`, at
/// `now`: the same checks as a sign-in, for tests and tools.
pub fn verify(
    jwt: &str,
    jwks_json: &str,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    groups_claim: &str,
) -> Result<Asserted, IdentityError> {
    let jwks: CoreJsonWebKeySet = serde_json::from_str(jwks_json)
        .map_err(|e| IdentityError::Invalid(format!("JWKS: {e}")))?;
    let v = IdTokenVerifier::new_confidential_client(
        ClientId::new(client_id.to_owned()),
        ClientSecret::new(String::new()),
        IssuerUrl::new(issuer.to_owned()).map_err(|e| IdentityError::Invalid(e.to_string()))?,
        jwks,
    );
    let token: PosternIdToken = jwt
        .parse()
        .map_err(|e| IdentityError::Refused(format!("not an ID token: {e}")))?;
    token
        .claims(&verifier(v), &Nonce::new(nonce.to_owned()))
        .map(|c| asserted(c, groups_claim))
        .map_err(|e| rp_err("the ID token was refused", e))
}

#[cfg(test)]
mod tests;
