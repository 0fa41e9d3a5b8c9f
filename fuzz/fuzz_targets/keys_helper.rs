//! The keys-socket protocol and the files the keys helper reads (grants.json,
//! link.json, break-glass.json): nothing panics, and no input can make the
//! helper print more than one line per grant, or a line carrying anything but
//! the options Postern writes and one key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_api::ssh::{self, BreakGlassFile, GrantsFile, KeysAnswer, KeysQuery, LinkState};

fn one_line(s: &str) {
    assert!(!s.contains(['\n', '\r', '\0']), "{s:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            let _ = serde_json::from_slice::<KeysQuery>(rest);
        }
        1 => {
            if let Ok(a) = serde_json::from_slice::<KeysAnswer>(rest) {
                for g in &a.grants {
                    for login in ["root", "deploy"] {
                        if let Some(line) = ssh::authorized_keys_line(g, login, 1_700_000_000_000) {
                            one_line(&line);
                        }
                    }
                }
                for k in &a.break_glass {
                    if let Some(line) = ssh::break_glass_line(k) {
                        one_line(&line);
                    }
                }
            }
        }
        2 => {
            if let Ok(f) = serde_json::from_slice::<GrantsFile>(rest) {
                for g in &f.grants {
                    if let Some(line) = ssh::authorized_keys_line(g, "root", i64::MAX) {
                        one_line(&line);
                    }
                    let _ = g.allows_login("root");
                    let _ = g.is_live(0);
                }
            }
        }
        3 => {
            if let Ok(l) = serde_json::from_slice::<LinkState>(rest) {
                let _ = l.unreachable_since_agent_silent();
            }
        }
        4 => {
            let _ = serde_json::from_slice::<BreakGlassFile>(rest);
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if ssh::check_key_text(s) {
                    one_line(s);
                }
                let _ = ssh::check_fingerprint(s);
                if let Some(line) = ssh::break_glass_line(s) {
                    one_line(&line);
                }
            }
            if rest.len() >= 8 {
                let ms = i64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
                if let Some(t) = ssh::expiry_time(ms) {
                    one_line(&t);
                }
            }
        }
    }
});
