//! REST bodies and query strings as the API reads them, and the validation that
//! follows: no input may panic, and what parses obeys its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_api::{admin, cmdexec, ssh, validate};

fn check_peer_text(s: &str) {
    for max in [0, 1, 3, 64, 256] {
        let t = validate::peer_text(s, max);
        assert!(t.len() <= max.max(3), "peer_text over budget");
        assert!(!t.contains('\0'));
        let l = validate::peer_line(s, max);
        assert!(!l.contains(['\n', '\r', '\0']));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<cmdexec::ExecuteRequest>(rest) {
                let _ = validate::range(
                    "timeout",
                    r.timeout.unwrap_or(60),
                    cmdexec::TIMEOUT_MIN_SECS,
                    cmdexec::TIMEOUT_MAX_SECS,
                );
                for h in r.target.iter().flatten() {
                    let _ = validate::hostname(h);
                }
            }
        }
        1 => {
            let _ = serde_json::from_slice::<admin::CreateProject>(rest);
        }
        2 => {
            let _ = serde_json::from_slice::<admin::CreateEdge>(rest);
        }
        3 => {
            let _ = serde_json::from_slice::<admin::CreateUser>(rest);
        }
        4 => {
            if let Ok(b) = serde_json::from_slice::<admin::RoleBinding>(rest) {
                for l in &b.logins {
                    let _ = validate::login(l);
                }
            }
        }
        5 => {
            let _ = serde_json::from_slice::<admin::CreateToken>(rest);
        }
        6 => {
            let _ = serde_json::from_slice::<admin::CreateEnrollmentToken>(rest);
        }
        7 => {
            let _ = serde_json::from_slice::<ssh::AddSshKey>(rest);
        }
        8 => {
            if let Ok(q) = serde_urlencoded::from_bytes::<admin::PageQuery>(rest)
                && let Ok((limit, offset)) = q.bounds()
            {
                assert!((1..=admin::PAGE_LIMIT_MAX).contains(&limit) && offset >= 0);
            }
        }
        9 => {
            if let Ok(q) = serde_urlencoded::from_bytes::<cmdexec::NodePageQuery>(rest)
                && let Ok((limit, offset)) = q.bounds()
            {
                assert!((1..=cmdexec::NODE_LIMIT_MAX).contains(&limit) && offset >= 0);
            }
        }
        10 => {
            // Output bytes round-trip through the API's encoding.
            let (text, enc) = cmdexec::encode_output(rest.to_vec());
            assert_eq!(cmdexec::decode_output(&text, enc).as_deref(), Some(rest));
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                check_peer_text(s);
                let _ = validate::name("user", s);
                let _ = validate::hostname(s);
                let _ = validate::login(s);
            }
        }
    }
});
