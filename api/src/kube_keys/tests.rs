//! The annotation parser: what is accepted, what each bad line is refused for, and
//! that the bounds hold.

use super::*;

const ALICE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t alice@laptop";
const ALICE_FP: &str = "SHA256:1sUhxhBabItmicnz8JFL/z1I3V1Kx1NDksZWVjhdfjA";
const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxFQIxdYoqipACxlRQNotxR29dE4Ktqc45c9Vthw5ue bob";
const WEAK_RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDAyljlRA7HX72diTqYmXbfXT2G1+HECb8drOIPC3Kxnkvjmmof5ERTTFBilr56U4ct7y9NztV4q2Wj9GAZUvUcu/lqWWd9cvmwbvuN0XmLUdHoHrjEjr4FU43nrNrAmxv2QTIbnBCHBadKSJCXebf4Lp2eZFdy27YI2R/+gri6Jw== root@vm";

#[test]
fn options_keys_and_comments_are_parsed() {
    let text = format!(
        "# on-call keys\n\nexpires=2030-01-02T03:04:05Z logins=root,deploy,root {ALICE}\n  {BOB}  \n"
    );
    let p = parse_annotation(&text);
    assert!(p.rejected.is_empty(), "{:?}", p.rejected);
    assert_eq!(p.keys.len(), 2);
    let a = &p.keys[0];
    assert_eq!(a.fingerprint, ALICE_FP);
    assert_eq!(a.algorithm, "ssh-ed25519");
    assert_eq!(a.logins, ["root", "deploy"]);
    assert_eq!(a.expires_at_ms, Some(1_893_553_445_000));
    assert_eq!(a.comment, "alice@laptop");
    assert_eq!(a.line, 3);
    assert!(
        !a.public_key.contains("alice"),
        "the comment is not part of the key"
    );
    let b = &p.keys[1];
    assert!(b.logins.is_empty() && b.expires_at_ms.is_none());
    assert_eq!(b.line, 4);
}

#[test]
fn every_bad_line_is_rejected_alone_with_its_number() {
    let lines = [
        format!("command=\"sh\" {ALICE}"),
        format!("expires=2030-01-02 {ALICE}"),
        format!("expires=2030-13-02T03:04:05Z {ALICE}"),
        format!("expires=2030-01-02T03:04:05+01:00 {ALICE}"),
        format!("expires=2030-01-02T03:04:05Z expires=2031-01-02T03:04:05Z {ALICE}"),
        format!("logins=Root {ALICE}"),
        format!("logins=root,,x {ALICE}"),
        format!("logins= {ALICE}"),
        "logins=root".to_string(),
        "ssh-ed25519 notbase64!".to_string(),
        WEAK_RSA.to_string(),
        format!("{ALICE}\u{7}"),
        ALICE.to_string(),
        ALICE.to_string(),
    ];
    let p = parse_annotation(&lines.join("\n"));
    assert_eq!(p.keys.len(), 1, "only the first plain ALICE: {:?}", p.keys);
    assert_eq!(p.keys[0].line, 13);
    let numbers: Vec<usize> = p.rejected.iter().map(|r| r.line).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]);
    assert!(
        p.rejected[0].reason.contains("unknown option"),
        "{:?}",
        p.rejected[0]
    );
    assert!(p.rejected[4].reason.contains("twice"));
    assert!(
        p.rejected[10].reason.contains("2048"),
        "{:?}",
        p.rejected[10]
    );
    assert!(p.rejected[12].reason.contains("earlier line"));
}

#[test]
fn bounds_refuse_the_whole_annotation_or_the_excess() {
    let huge = format!("{ALICE}\n{}", "#".repeat(MAX_ANNOTATION_BYTES));
    let p = parse_annotation(&huge);
    assert!(p.keys.is_empty());
    assert_eq!(p.rejected[0].line, 0);
    let many = format!("{ALICE}\n{}", "\n".repeat(MAX_LINES));
    assert!(parse_annotation(&many).keys.is_empty());
    let long = format!("{ALICE} {}", "c".repeat(MAX_LINE_BYTES));
    assert!(parse_annotation(&long).keys.is_empty());
    // Many bad lines: only the first MAX_REJECTED are reported.
    let junk = "junk\n".repeat(MAX_REJECTED + 50);
    assert_eq!(parse_annotation(&junk).rejected.len(), MAX_REJECTED);
}

#[test]
fn printed_lines_carry_expiry_and_logins_and_never_an_expired_key() {
    let p = parse_annotation(&format!("expires=2030-01-02T03:04:05Z logins=root {ALICE}"));
    let k = &p.keys[0];
    let line = authorized_keys_line(k, "root", 0).expect("a line");
    assert_eq!(
        line,
        "restrict,pty,expiry-time=\"20300102030405Z\" ssh-ed25519 \
         AAAAC3NzaC1lZDI1NTE5AAAAIL5yExNkeBgng/ew1JNV271qp65gWPUWVhuhe0Qf6L0t \
         postern:kube-node-annotation:line=1"
    );
    assert!(authorized_keys_line(k, "deploy", 0).is_none());
    assert!(authorized_keys_line(k, "root", 1_893_553_445_000).is_none());
    let any = &parse_annotation(BOB).keys[0];
    assert_eq!(
        authorized_keys_line(any, "postgres", i64::MAX).as_deref(),
        Some(
            "restrict,pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxFQIxdYoqipACxlRQNotxR29dE4Ktqc45c9Vthw5ue \
             postern:kube-node-annotation:line=1"
        )
    );
    // A tampered cache entry prints nothing.
    let mut bad = any.clone();
    bad.public_key = format!("{} x\nssh-rsa AAAA", bad.public_key);
    assert!(authorized_keys_line(&bad, "root", 0).is_none());
    let mut bad = any.clone();
    bad.logins = vec!["ro ot".into()];
    assert!(authorized_keys_line(&bad, "ro ot", 0).is_none());
}

#[test]
fn utc_times_round_trip() {
    for s in [
        "1970-01-01T00:00:00Z",
        "2026-12-01T00:00:00Z",
        "2099-12-31T23:59:59Z",
    ] {
        let ms = parse_utc(s).expect(s);
        assert_eq!(format_utc(ms).as_deref(), Some(s));
    }
    assert!(parse_utc("2026-02-30T00:00:00Z").is_err());
    assert!(parse_utc("+026-12-01T00:00:00Z").is_err());
    assert!(parse_utc("2026-12-01T24:00:00Z").is_err());
    let long = parse_utc(&"9".repeat(5000)).unwrap_err();
    assert!(long.len() < 120, "{long}");
}
