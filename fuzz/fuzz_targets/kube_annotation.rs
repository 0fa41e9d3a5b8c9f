//! The Kubernetes Node annotation (`postern.dev/authorized-keys`), which anyone who
//! may edit the Node writes: nothing panics, the bounds hold, every accepted key
//! is well formed, and every printed line is one line with one key and only the
//! options Postern writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_api::kube_keys::{
    KubeKeysFile, MAX_KEYS, MAX_REJECTED, authorized_keys_line, parse_annotation,
};

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
