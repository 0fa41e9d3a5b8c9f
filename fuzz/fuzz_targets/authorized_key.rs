//! Public-key text as users register it (`POST /users/{u}/ssh-keys`): nothing
//! panics, and a key that is accepted is stored in a canonical form that parses
//! again to the same fingerprint and passes the agent's key check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_bastion::ssh::keys::parse_user_key;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = parse_user_key(text) {
        assert!(postern_api::ssh::check_key_text(&k.public_key), "{:?}", k.public_key);
        assert!(!k.comment.chars().any(char::is_control));
        let again = parse_user_key(&k.public_key).expect("the canonical form parses");
        assert_eq!(again.fingerprint, k.fingerprint);
    }
});
