//! ID tokens crafted and signed here, every refusal included.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use super::*;

struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer {
            key: EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
            kid: kid.into(),
        }
    }
    fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty":"EC","crv":"P-256","use":"sig","alg":"ES256","kid":self.kid,
               "x":B64.encode(&p[1..33]),"y":B64.encode(&p[33..65])})
    }
    fn sign(&self, header: Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
    fn jwt(&self, claims: &Value) -> String {
        self.sign(json!({"alg":"ES256","typ":"JWT","kid":self.kid}), claims)
    }
}

const ISS: &str = "https://idp.example";

fn claims(iat_off: i64, exp_off: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISS, "aud": "postern", "sub": "u-1", "iat": now + iat_off,
           "exp": now + exp_off, "nonce": "n-1", "amr": ["pwd", "otp"],
           "email": "ann@example.com", "groups": ["ops", "admins"]})
}

fn check(jwt: &str, jwks: &Value, aud: &str, nonce: &str) -> Result<Asserted, String> {
    verify(jwt, &jwks.to_string(), ISS, aud, nonce, "groups").map_err(|e| e.to_string())
}

#[test]
fn a_good_token_is_read_and_every_bad_one_refused() {
    let k = Signer::new("k1");
    let jwks = json!({"keys": [k.jwk()]});
    let good = k.jwt(&claims(0, 300));
    let a = check(&good, &jwks, "postern", "n-1").unwrap();
    assert_eq!(a.subject, "u-1");
    assert_eq!(a.groups, ["ops", "admins"]);
    assert_eq!(a.amr, ["pwd", "otp"]);
    assert_eq!(a.email.as_deref(), Some("ann@example.com"));

    // Wrong audience, wrong nonce.
    assert!(check(&good, &jwks, "another-client", "n-1").is_err());
    assert!(check(&good, &jwks, "postern", "n-2").is_err());
    // Expired beyond the skew; issued in the future beyond the skew.
    assert!(
        check(
            &k.jwt(&claims(-600, -MAX_SKEW_SECS - 5)),
            &jwks,
            "postern",
            "n-1"
        )
        .is_err()
    );
    assert!(
        check(
            &k.jwt(&claims(MAX_SKEW_SECS + 60, 600)),
            &jwks,
            "postern",
            "n-1"
        )
        .is_err()
    );
    // Within the skew: accepted.
    assert!(check(&k.jwt(&claims(10, 300)), &jwks, "postern", "n-1").is_ok());
    // A bad signature: the payload changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut c = claims(0, 300);
    c["groups"] = json!(["org-admins"]);
    parts[1] = B64.encode(c.to_string());
    assert!(check(&parts.join("."), &jwks, "postern", "n-1").is_err());
    // HS256 with the client secret as its key: never taken.
    let hs = format!(
        "{}.{}.{}",
        B64.encode(json!({"alg":"HS256","kid":"k1"}).to_string()),
        B64.encode(claims(0, 300).to_string()),
        B64.encode([0u8; 32])
    );
    assert!(check(&hs, &jwks, "postern", "n-1").is_err());
    // alg none.
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg":"none"}).to_string()),
        B64.encode(claims(0, 300).to_string())
    );
    assert!(check(&none, &jwks, "postern", "n-1").is_err());
    // Signed by a key the JWKS does not hold.
    let stranger = Signer::new("k1");
    assert!(check(&stranger.jwt(&claims(0, 300)), &jwks, "postern", "n-1").is_err());
    let unknown = Signer::new("k9");
    assert!(check(&unknown.jwt(&claims(0, 300)), &jwks, "postern", "n-1").is_err());
    // Garbage.
    assert!(check("a.b.c", &jwks, "postern", "n-1").is_err());
    assert!(check(&"x".repeat(100_000), &jwks, "postern", "n-1").is_err());
}

#[test]
fn groups_are_read_from_the_configured_claim_and_bounded() {
    let k = Signer::new("k1");
    let jwks = json!({"keys": [k.jwk()]}).to_string();
    let mut c = claims(0, 300);
    c["roles"] = json!("dba");
    c["groups"] = json!((0..1000).map(|i| format!("g{i}")).collect::<Vec<_>>());
    let a = verify(&k.jwt(&c), &jwks, ISS, "postern", "n-1", "roles").unwrap();
    assert_eq!(a.groups, ["dba"]);
    let a = verify(&k.jwt(&c), &jwks, ISS, "postern", "n-1", "groups").unwrap();
    assert_eq!(a.groups.len(), 256);
}
