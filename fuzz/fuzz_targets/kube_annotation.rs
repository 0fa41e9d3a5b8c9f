//! The Kubernetes Node annotations (`postern.dev/authorized-keys` and its
//! signature `postern.dev/authorized-keys-sig`), which anyone who may update the
//! Node or its status writes: nothing panics, the bounds hold, nothing but the one
//! document the signer key signed (the seed `signed`) is ever accepted, every
//! accepted key is well formed, and every printed line is one line with one key
//! and only the options Postern writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_api::kube_keys::signed::{Context, Signers, evaluate};
use postern_api::kube_keys::{
    KubeKeysFile, MAX_KEYS, MAX_REJECTED, authorized_keys_line, parse_annotation,
};

/// The signer: the key of `api/src/kube_keys/signed/tests.rs` whose `ssh-keygen`
/// signature is in the seed `signed` (its private key is not anywhere).
const SIGNER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIBdgJ9ee8rkVhmglxTL0oi8buJDzGkYeJGV/KsLI9gV admin";
/// SHA-256 of the one document SIGNER signed.
const SIGNED_DOC_SHA256: &str = "8c2c9ea3af9aed32460bcda4b73cc7292e6e5c754cfbea7f734b52accb7e5efe";
/// 2029-06-01T00:00:00Z: the signed document (not-after 2030) is valid then.
const NOW_MS: i64 = 1_874_966_400_000;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 1 {
        // The cache file as the keys helper reads it.
        if let Ok(f) = serde_json::from_slice::<KubeKeysFile>(rest) {
            for k in &f.keys {
                if let Some(line) = authorized_keys_line(k, "root", 1_700_000_000_000) {
                    assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
                    assert!(line.starts_with("restrict,pty"), "{line:?}");
                }
            }
        }
        return;
    }
    if which % 4 == 2 {
        // The document, a NUL, the signature.
        let (doc, sig) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let Ok(doc) = std::str::from_utf8(doc) else {
            return;
        };
        let Ok(sig) = sig.map(std::str::from_utf8).transpose() else {
            return;
        };
        let Ok(signers) = Signers::parse(SIGNER) else {
            panic!("the signer key parses");
        };
        let cx = Context {
            node_name: "worker-3",
            signers: &signers,
            now_ms: NOW_MS,
            floor: None,
        };
        let out = evaluate(Some(doc), sig, &cx);
        if let Some(a) = &out.accepted {
            assert_eq!(
                a.sha256, SIGNED_DOC_SHA256,
                "accepted a document nobody signed: {doc:?}"
            );
        } else {
            assert!(out.parsed.keys.is_empty());
        }
        assert!(out.parsed.keys.len() <= MAX_KEYS);
        for r in &out.parsed.rejected {
            assert!(
                r.reason.len() < 300 && !r.reason.contains(['\n', '\r']),
                "{r:?}"
            );
        }
        for k in &out.parsed.keys {
            assert!(k.is_well_formed(), "{k:?}");
            assert!(k.expires_at_ms.is_some(), "capped at not-after: {k:?}");
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let p = parse_annotation(text);
    assert!(p.keys.len() <= MAX_KEYS);
    assert!(p.rejected.len() <= MAX_REJECTED);
    for k in &p.keys {
        assert!(k.is_well_formed(), "{k:?}");
        for login in ["root", "deploy"] {
            if let Some(line) = authorized_keys_line(k, login, 0) {
                assert!(!line.contains(['\n', '\r', '\0']), "{line:?}");
                let words: Vec<&str> = line.split(' ').collect();
                assert_eq!(words.len(), 4, "options, algorithm, key, comment: {line:?}");
                assert_eq!(format!("{} {}", words[1], words[2]), k.public_key);
            }
        }
    }
});
