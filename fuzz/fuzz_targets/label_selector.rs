//! Label selectors as users write them to pick nodes by their labels: nothing
//! panics, a refusal points inside the input, an accepted selector prints a
//! canonical form that parses back to the same selector and prints the same
//! again, and matching it against labels never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_api::labels::{Labels, MAX_SELECTOR_BYTES, Selector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Selector::parse(text) {
        Ok(s) => {
            let canonical = s.to_string();
            assert!(canonical.len() <= MAX_SELECTOR_BYTES, "{canonical:?}");
            let again = Selector::parse(&canonical).expect("the canonical form parses");
            assert_eq!(again, s, "{text:?} printed {canonical:?}");
            assert_eq!(again.to_string(), canonical);
            let labels: Labels = [("role", "db"), ("zone", "a"), ("in", ""), ("x.io/k", "b")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let _ = s.matches(&labels);
            let _ = s.matches(&Labels::new());
        }
        Err(e) => {
            assert!(e.position() <= text.len().max(MAX_SELECTOR_BYTES), "{e}");
        }
    }
});
