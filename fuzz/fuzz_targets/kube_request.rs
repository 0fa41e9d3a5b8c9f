//! What a Kubernetes client sends the bastion's Kubernetes door: the API path
//! read for the audit log, the TLS server name that names an edge, header names
//! and `Connection` lists checked before anything crosses a hop, and Kubernetes
//! groups. Nothing panics, what is kept is bounded and free of control
//! characters, and no credential or identity header is ever forwardable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_api::kube;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (method, rest) = s.split_once(' ').unwrap_or(("GET", s));
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let i = kube::request_info(method, path, query);
    for part in [&i.namespace, &i.name, &i.resource, &i.subresource, &i.api_group, &i.path] {
        assert!(part.chars().count() <= 253);
        assert!(!part.chars().any(char::is_control));
    }
    assert!(i.verb.chars().count() <= 32);
    let named = kube::connection_named(s.split('\n'));
    assert!(named.len() <= 16);
    let lower = s.to_ascii_lowercase();
    if lower == "authorization" || lower.starts_with("impersonate-") || lower.starts_with("postern-") {
        assert!(!kube::forwardable(&lower, &named));
    }
    if kube::check_group(s).is_ok() {
        assert!(!s.starts_with("system:") && s.len() <= kube::MAX_GROUP_LEN);
        assert!(http::HeaderValue::from_str(s).is_ok());
    }
});
