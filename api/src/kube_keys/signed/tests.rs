//! Signed annotations: what a cluster admin's signature makes usable, and every
//! way a writer of `nodes/status` (who can set any annotation but holds no signer
//! key) might try to get a key in anyway: no signature, its own key, an edited
//! document, another node's document, an old or an expired one.

use ssh_key::private::Ed25519Keypair;
use ssh_key::{LineEnding, PrivateKey};

use super::*;

const ALICE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t alice@laptop";
const ALICE_FP: &str = "SHA256:1sUhxhBabItmicnz8JFL/z1I3V1Kx1NDksZWVjhdfjA";
const MALLORY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxFQIxdYoqipACxlRQNotxR29dE4Ktqc45c9Vthw5ue mallory";
const NODE: &str = "worker-3";
/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000;
/// 2026-02-01T00:00:00Z, a month after NOW.
const NEXT_MONTH: &str = "2026-02-01T00:00:00Z";
const NEXT_MONTH_MS: i64 = 1_769_904_000_000;

/// An Ed25519 key from a fixed seed: signatures made here are deterministic.
fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

fn signers_of(keys: &[&PrivateKey]) -> Signers {
    let lines: Vec<String> = keys
        .iter()
        .map(|k| k.public_key().to_openssh().expect("public key"))
        .collect();
    Signers::parse(&lines.join("\n")).expect("signers")
}

/// What `ssh-keygen -Y sign -n NAMESPACE` writes, made with the crate instead.
fn sign_ns(k: &PrivateKey, namespace: &str, doc: &str) -> String {
    k.sign(namespace, HashAlg::Sha512, doc.as_bytes())
        .expect("sign")
        .to_pem(LineEnding::LF)
        .expect("pem")
}

fn sign(k: &PrivateKey, doc: &str) -> String {
    sign_ns(k, SIG_NAMESPACE, doc)
}

fn doc(node: &str, serial: u64, not_after: &str, body: &str) -> String {
    format!("node={node}\nserial={serial}\nnot-after={not_after}\n{body}")
}

/// [`verify`] with a signature, `&String`s welcome.
fn check(d: &str, sig: &str, c: &Context<'_>) -> Result<Verified, DocError> {
    verify(d, Some(sig), c)
}

fn cx<'a>(signers: &'a Signers, floor: Option<&'a SignedDoc>) -> Context<'a> {
    Context {
        node_name: NODE,
        signers,
        now_ms: NOW,
        floor,
    }
}

#[test]
fn a_document_signed_by_a_configured_key_grants_its_keys_until_not_after() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let d = doc(
        NODE,
        7,
        NEXT_MONTH,
        &format!("# on-call\nlogins=root {ALICE}\nexpires=2099-01-01T00:00:00Z {MALLORY}\n"),
    );
    let v = check(&d, &sign(&admin, &d), &cx(&signers, None)).expect("accepted");
    assert!(v.parsed.rejected.is_empty(), "{:?}", v.parsed.rejected);
    assert_eq!(v.parsed.keys.len(), 2);
    let a = &v.parsed.keys[0];
    assert_eq!(a.fingerprint, ALICE_FP);
    assert_eq!(a.logins, ["root"]);
    assert_eq!(a.line, 5, "numbered as lines of the whole annotation");
    // No expires= of its own, or a later one: the document's not-after.
    assert_eq!(a.expires_at_ms, Some(NEXT_MONTH_MS));
    assert_eq!(v.parsed.keys[1].expires_at_ms, Some(NEXT_MONTH_MS));
    assert_eq!(v.doc.serial, 7);
    assert_eq!(v.doc.not_after_ms, NEXT_MONTH_MS);
    assert_eq!(
        v.doc.signer,
        admin.public_key().fingerprint(HashAlg::Sha256).to_string()
    );
    assert_eq!(v.doc.sha256.len(), 64);
    // A key line that is bad is still refused alone, with its own number.
    let d = doc(NODE, 8, NEXT_MONTH, &format!("{ALICE}\nssh-ed25519 nope\n"));
    let v = check(&d, &sign(&admin, &d), &cx(&signers, None)).expect("accepted");
    assert_eq!(v.parsed.keys.len(), 1);
    assert_eq!(v.parsed.rejected[0].line, 5);
}

/// Signatures made by the real `ssh-keygen -Y sign -n postern-node-keys` (OpenSSH
/// 9.2) over a file, with an Ed25519 and an ECDSA P-256 key: the format the README
/// tells admins to use is the one the agent reads.
#[test]
fn signatures_from_ssh_keygen_verify_with_or_without_the_files_last_newline() {
    const FILE: &str = "node=worker-3\nserial=7\nnot-after=2030-01-01T00:00:00Z\n# on-call\n\
        logins=root ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t alice@laptop\n";
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIBdgJ9ee8rkVhmglxTL0oi8buJDzGkYeJGV/KsLI9gV cluster-admin";
    const ED25519_SIG: &str = "-----BEGIN SSH SIGNATURE-----
U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAggF2An157yuRWGaCXFMvSiLxu4k
PMaRh4kZX8qwsj2BUAAAARcG9zdGVybi1ub2RlLWtleXMAAAAAAAAABnNoYTUxMgAAAFMA
AAALc3NoLWVkMjU1MTkAAABAp+jRhl0SU6TK2/i+uLwKlKk3j9T3SXpJ9XaUr2AWc9hTUr
neJRbWjEcfL+bjOM1EcTzeHCU9M756+2fT5m37BA==
-----END SSH SIGNATURE-----
";
    const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKs3CYzqKDKUdoxTGf5OV02PxGNymCt79wVVfOJYwmdABSNZr8C1ToAfgLod3cVA3zO32g86UdQEsbGvOSOsyho= cluster-admin-p256";
    const P256_SIG: &str = "-----BEGIN SSH SIGNATURE-----
U1NIU0lHAAAAAQAAAGgAAAATZWNkc2Etc2hhMi1uaXN0cDI1NgAAAAhuaXN0cDI1NgAAAE
EEqzcJjOooMpR2jFMZ/k5XTY/EY3KYK3v3BVV84ljCZ0AFI1mvwLVOgB+Auh3dxUDfM7fa
DzpR1ASxsa85I6zKGgAAABFwb3N0ZXJuLW5vZGUta2V5cwAAAAAAAAAGc2hhNTEyAAAAZQ
AAABNlY2RzYS1zaGEyLW5pc3RwMjU2AAAASgAAACEApZ96JYi3F5X7cOEyO+k4uHq8s02G
JiqFGjLtCRs+LkUAAAAhANbudmHiqZmwPdKhAMWB0OFqGeJtllKp8kANg94s6BXq
-----END SSH SIGNATURE-----
";
    let signers =
        Signers::parse(&format!("# cluster admins\n{ED25519}\n\n{P256}\n")).expect("signers");
    let mut c = cx(&signers, None);
    c.now_ms = parse_utc("2029-06-01T00:00:00Z").expect("time");
    // `kubectl annotate k="$(cat file)"` drops the file's last newline, and the
    // signature's too.
    let stripped = FILE.trim_end_matches('\n');
    for sig in [ED25519_SIG, P256_SIG] {
        for (d, s) in [(FILE, sig), (stripped, sig.trim_end())] {
            let v = verify(d, Some(s), &c).expect("ssh-keygen's signature verifies");
            assert_eq!(v.parsed.keys.len(), 1);
            assert_eq!(v.parsed.keys[0].fingerprint, ALICE_FP);
            assert_eq!(v.parsed.keys[0].line, 5);
            assert_eq!(v.doc.serial, 7);
        }
    }
    // One byte more or less is another document.
    let longer = format!("{FILE}\n");
    assert!(matches!(
        verify(longer.as_str(), Some(ED25519_SIG), &c),
        Err(DocError::Mismatch(_))
    ));
    let shorter = &FILE[..FILE.len() - 2];
    assert!(matches!(
        verify(shorter, Some(ED25519_SIG), &c),
        Err(DocError::Mismatch(_))
    ));
}

#[test]
fn a_missing_or_unreadable_signature_grants_nothing() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let d = doc(NODE, 1, NEXT_MONTH, &format!("{ALICE}\n"));
    let c = cx(&signers, None);
    assert_eq!(verify(&d, None, &c), Err(DocError::Unsigned));
    assert_eq!(verify(&d, Some(" \n"), &c), Err(DocError::Unsigned));
    // What a status writer did before signatures: a plain key list.
    assert_eq!(verify(ALICE, None, &c), Err(DocError::Unsigned));
    assert!(matches!(
        verify(
            &d,
            Some("-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----"),
            &c
        ),
        Err(DocError::SignatureUnreadable(_))
    ));
    assert!(matches!(
        verify(&d, Some(ALICE), &c),
        Err(DocError::SignatureUnreadable(_))
    ));
    assert_eq!(
        check(&d, &"A".repeat(MAX_SIGNATURE_BYTES + 1), &c),
        Err(DocError::SignatureTooLarge)
    );
    let huge = format!("{d}{}", "#".repeat(MAX_ANNOTATION_BYTES));
    assert_eq!(
        check(&huge, &sign(&admin, &huge), &c),
        Err(DocError::TooLarge)
    );
}

#[test]
fn a_signature_by_any_other_key_or_for_another_purpose_grants_nothing() {
    let admin = key(1);
    let other_admin = key(2);
    let mallory = key(3);
    let signers = signers_of(&[&admin, &other_admin]);
    let c = cx(&signers, None);
    let d = doc(NODE, 1, NEXT_MONTH, &format!("{MALLORY}\n"));
    // The status writer's own key.
    let fp = mallory
        .public_key()
        .fingerprint(HashAlg::Sha256)
        .to_string();
    assert_eq!(
        check(&d, &sign(&mallory, &d), &c),
        Err(DocError::UnknownSigner(fp))
    );
    // A configured key's signature made for something else (a git commit, a file).
    assert_eq!(
        check(&d, &sign_ns(&admin, "git", &d), &c),
        Err(DocError::Namespace("git".into()))
    );
    // Either configured key may sign.
    assert!(check(&d, &sign(&other_admin, &d), &c).is_ok());
}

#[test]
fn a_signed_document_edited_afterwards_grants_nothing() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let c = cx(&signers, None);
    let d = doc(NODE, 1, NEXT_MONTH, &format!("logins=deploy {ALICE}\n"));
    let sig = sign(&admin, &d);
    assert!(check(&d, &sig, &c).is_ok());
    let edits = [
        format!("{d}{MALLORY}\n"),
        d.replace("logins=deploy", "logins=root"),
        d.replace("serial=1", "serial=9"),
        d.replace(NEXT_MONTH, "2026-06-01T00:00:00Z"),
        format!("{d}\n"),
        d.replacen('\n', "\r\n", 1),
    ];
    for e in &edits {
        assert!(
            matches!(check(e, &sig, &c), Err(DocError::Mismatch(_))),
            "{e:?}"
        );
    }
    // The reason names the signer, and fits the bastion's 300 characters.
    let reason = evaluate(Some(edits[0].as_str()), Some(sig.as_str()), &c)
        .parsed
        .rejected[0]
        .reason
        .clone();
    assert!(reason.contains("changed after it was signed"), "{reason}");
    assert!(reason.len() < 300, "{reason}");
}

#[test]
fn a_document_signed_for_another_node_grants_nothing_here() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let d = doc("worker-4", 1, NEXT_MONTH, &format!("{ALICE}\n"));
    assert_eq!(
        check(&d, &sign(&admin, &d), &cx(&signers, None)),
        Err(DocError::OtherNode("worker-4".into(), NODE.into()))
    );
    // Not a prefix either.
    let d = doc("worker-33", 1, NEXT_MONTH, &format!("{ALICE}\n"));
    assert!(matches!(
        check(&d, &sign(&admin, &d), &cx(&signers, None)),
        Err(DocError::OtherNode(..))
    ));
}

#[test]
fn an_expired_document_or_one_valid_for_too_long_grants_nothing() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let c = cx(&signers, None);
    let expired = doc(NODE, 1, "2025-12-31T23:59:59Z", &format!("{ALICE}\n"));
    assert_eq!(
        check(&expired, &sign(&admin, &expired), &c),
        Err(DocError::Expired("2025-12-31T23:59:59Z".into()))
    );
    // At the second itself it is over.
    let now = doc(NODE, 1, "2026-01-01T00:00:00Z", &format!("{ALICE}\n"));
    assert!(matches!(
        check(&now, &sign(&admin, &now), &c),
        Err(DocError::Expired(_))
    ));
    let far = doc(NODE, 1, "2027-03-01T00:00:00Z", &format!("{ALICE}\n"));
    assert!(matches!(
        check(&far, &sign(&admin, &far), &c),
        Err(DocError::TooFarAhead(_))
    ));
    let within = doc(NODE, 1, "2027-01-01T00:00:00Z", &format!("{ALICE}\n"));
    assert!(check(&within, &sign(&admin, &within), &c).is_ok());
}

#[test]
fn an_older_serial_or_a_reused_one_grants_nothing() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let d5 = doc(NODE, 5, NEXT_MONTH, &format!("{ALICE}\n{MALLORY}\n"));
    let s5 = sign(&admin, &d5);
    let d6 = doc(NODE, 6, NEXT_MONTH, &format!("{ALICE}\n"));
    let s6 = sign(&admin, &d6);
    let v6 = check(&d6, &s6, &cx(&signers, None)).expect("serial 6");
    let floor = v6.doc;
    // The key serial 6 took away cannot come back with serial 5.
    assert_eq!(
        check(&d5, &s5, &cx(&signers, Some(&floor))),
        Err(DocError::OldSerial(5, 6))
    );
    // The same document again (every watch event, every restart): accepted.
    assert_eq!(
        check(&d6, &s6, &cx(&signers, Some(&floor))).map(|v| v.doc),
        Ok(floor.clone())
    );
    // Another document under the same serial: refused.
    let other6 = doc(NODE, 6, NEXT_MONTH, &format!("{MALLORY}\n"));
    assert_eq!(
        check(&other6, &sign(&admin, &other6), &cx(&signers, Some(&floor))),
        Err(DocError::SerialReused(6))
    );
    let d7 = doc(NODE, 7, NEXT_MONTH, "");
    let v7 = check(&d7, &sign(&admin, &d7), &cx(&signers, Some(&floor))).expect("7");
    assert!(v7.parsed.keys.is_empty());
    assert_eq!(v7.doc.serial, 7);
}

#[test]
fn the_header_is_three_exact_lines() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let c = cx(&signers, None);
    let bad = [
        (format!("{ALICE}\n"), 1),
        (
            format!("# keys\nnode={NODE}\nserial=1\nnot-after={NEXT_MONTH}\n"),
            1,
        ),
        (
            format!("node = {NODE}\nserial=1\nnot-after={NEXT_MONTH}\n"),
            1,
        ),
        (format!("node=\nserial=1\nnot-after={NEXT_MONTH}\n"), 1),
        (
            format!("serial=1\nnode={NODE}\nnot-after={NEXT_MONTH}\n"),
            1,
        ),
        (
            format!("node={NODE}\nserial=-1\nnot-after={NEXT_MONTH}\n"),
            2,
        ),
        (
            format!("node={NODE}\nserial=1e3\nnot-after={NEXT_MONTH}\n"),
            2,
        ),
        (
            format!("node={NODE}\nserial=99999999999999999999\nnot-after={NEXT_MONTH}\n"),
            2,
        ),
        (format!("node={NODE}\nserial=1\n"), 3),
        (format!("node={NODE}\nserial=1\nnot-after=2026-02-01\n"), 3),
        (format!("node={NODE}\nserial=1\nexpires={NEXT_MONTH}\n"), 3),
    ];
    for (d, line) in &bad {
        match check(d, &sign(&admin, d), &c) {
            Err(DocError::Header(n, _)) => assert_eq!(n, *line, "{d:?}"),
            other => panic!("{d:?}: {other:?}"),
        }
    }
}

#[test]
fn evaluate_reports_a_refused_document_as_line_0_and_an_absent_one_not_at_all() {
    let admin = key(1);
    let signers = signers_of(&[&admin]);
    let c = cx(&signers, None);
    assert_eq!(evaluate(None, None, &c), Outcome::default());
    assert_eq!(evaluate(Some(" \n"), None, &c), Outcome::default());
    // A signature alone grants nothing and needs no report.
    let d = doc(NODE, 1, NEXT_MONTH, &format!("{ALICE}\n"));
    let sig = sign(&admin, &d);
    assert_eq!(evaluate(None, Some(sig.as_str()), &c), Outcome::default());
    let refused = evaluate(Some(format!("logins=root {MALLORY}").as_str()), None, &c);
    assert!(refused.parsed.keys.is_empty());
    assert!(refused.accepted.is_none());
    assert_eq!(refused.parsed.rejected.len(), 1);
    assert_eq!(refused.parsed.rejected[0].line, 0);
    assert!(
        refused.parsed.rejected[0].reason.contains(SIG_ANNOTATION),
        "{:?}",
        refused.parsed.rejected
    );
    let ok = evaluate(Some(d.as_str()), Some(sig.as_str()), &c);
    assert_eq!(ok.parsed.keys.len(), 1);
    assert_eq!(ok.accepted.map(|a| a.serial), Some(1));
}

#[test]
fn signer_files_hold_only_plain_acceptable_keys() {
    // Without a comment; a comment of their own is added below.
    let openssh = |k: PrivateKey| {
        k.public_key()
            .to_openssh()
            .expect("key")
            .trim_end()
            .to_string()
    };
    let a = openssh(key(1));
    let b = openssh(key(2));
    let s = Signers::parse(&format!("# admins\n\n{a} alice\n  {b}\n{a} again\n")).expect("two");
    assert_eq!(s.fingerprints().count(), 2, "a key twice counts once");
    assert!(s.contains(&key(2).public_key().fingerprint(HashAlg::Sha256).to_string()));
    assert_eq!(Signers::parse("").err(), Some(SignersError::Empty));
    assert_eq!(
        Signers::parse("# nobody\n").err(),
        Some(SignersError::Empty)
    );
    assert!(matches!(
        Signers::parse(&format!("{a}\ncert-authority {b}\n")),
        Err(SignersError::Line(2, _))
    ));
    assert!(matches!(
        Signers::parse(
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDAyljlRA7HX72diTqYmXbfXT2G1+HECb8drOIPC3Kxnkvjmmof5ERTTFBilr56U4ct7y9NztV4q2Wj9GAZUvUcu/lqWWd9cvmwbvuN0XmLUdHoHrjEjr4FU43nrNrAmxv2QTIbnBCHBadKSJCXebf4Lp2eZFdy27YI2R/+gri6Jw== root@vm"
        ),
        Err(SignersError::Line(1, KeyError::WeakRsa(_)))
    ));
    let many: Vec<String> = (0..=MAX_SIGNERS as u8)
        .map(|i| {
            key(i.wrapping_add(10))
                .public_key()
                .to_openssh()
                .expect("key")
        })
        .collect();
    assert_eq!(
        Signers::parse(&many.join("\n")).err(),
        Some(SignersError::TooMany)
    );
}
