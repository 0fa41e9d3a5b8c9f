//! The module's tests, apart from it.

use super::*;

#[test]
fn resource_paths_read_as_the_apiserver_reads_them() {
    let i = request_info("GET", "/api/v1/namespaces/prod/pods/web-1", None);
    assert_eq!(
        (i.verb.as_str(), i.api_group.as_str(), i.resource.as_str()),
        ("get", "", "pods")
    );
    assert_eq!((i.namespace.as_str(), i.name.as_str()), ("prod", "web-1"));
    let i = request_info("GET", "/apis/apps/v1/namespaces/prod/deployments", None);
    assert_eq!(
        (i.verb.as_str(), i.api_group.as_str(), i.resource.as_str()),
        ("list", "apps", "deployments")
    );
    let i = request_info("GET", "/api/v1/pods", Some("watch=true&limit=5"));
    assert_eq!(i.verb, "watch");
    let i = request_info("GET", "/api/v1/watch/namespaces/a/configmaps", None);
    assert_eq!((i.verb.as_str(), i.namespace.as_str()), ("watch", "a"));
    let i = request_info(
        "POST",
        "/api/v1/namespaces/a/pods/p/exec",
        Some("command=sh"),
    );
    assert_eq!(
        (i.verb.as_str(), i.subresource.as_str(), i.name.as_str()),
        ("create", "exec", "p")
    );
    let i = request_info("DELETE", "/api/v1/namespaces/a/configmaps", None);
    assert_eq!(i.verb, "deletecollection");
    let i = request_info("GET", "/api/v1/namespaces/kube-system", None);
    assert_eq!(
        (i.resource.as_str(), i.namespace.as_str(), i.name.as_str()),
        ("namespaces", "kube-system", "kube-system")
    );
    let i = request_info("GET", "/version", None);
    assert!(!i.is_resource);
    assert_eq!((i.verb.as_str(), i.path.as_str()), ("get", "/version"));
    let i = request_info("GET", "/apis/apps/v1", None);
    assert!(!i.is_resource);
}

#[test]
fn encoded_paths_read_as_the_api_server_decodes_them() {
    let i = request_info("POST", "/%61pi/v1/namespaces/default/config%6daps", None);
    assert_eq!(
        (i.verb.as_str(), i.resource.as_str(), i.namespace.as_str()),
        ("create", "configmaps", "default")
    );
    assert!(is_mutation(&i.verb));
    let i = request_info("GET", "/api/v1/%77atch/namespaces/a/pods", None);
    assert_eq!(i.verb, "watch");
    // Unknown methods and broken escapes are changes, never reads.
    assert!(is_mutation(&request_info("PROPFIND", "/x%zz%", None).verb));
    assert!(!is_mutation("list"));
}

#[test]
fn a_watch_is_what_the_api_server_serves_as_one() {
    // apimachinery's `Convert_Slice_string_To_bool`: only an absent first
    // value, `0` and `false` (in any case) are not a watch.
    for q in [
        "watch=true",
        "watch=t",
        "watch=TRUE",
        "watch=%74rue",
        "%77atch=1",
        "a=b&watch=True",
        "watch=yes",
        "watch=on",
        "watch=",
        "watch",
        "watch&limit=5",
        "watch=no",
        "watch=%20false",
        "watch=1&watch=0",
        // The first pair Go can read is the first value.
        "watch=%zz&watch=1",
        // Read by an API server built with Go before 1.17, which splits at `;`.
        "watch=1;a=b",
        "a=b;watch=1",
    ] {
        assert!(is_watch_query(Some(q)), "{q}");
        assert_eq!(
            request_info("GET", "/api/v1/pods", Some(q)).verb,
            "watch",
            "{q}"
        );
    }
    for q in [
        "watch=false",
        "watch=False",
        "watch=FALSE",
        "watch=fAlSe",
        "watch=%46alse",
        "watch=0",
        "watch=0&watch=1",
        "watch=%zz&watch=0",
        "watchx=true",
        "xwatch",
        "",
        "limit=5",
    ] {
        assert!(!is_watch_query(Some(q)), "{q}");
        assert_eq!(
            request_info("GET", "/api/v1/pods", Some(q)).verb,
            "list",
            "{q}"
        );
    }
    assert!(!is_watch_query(None));
    // A watch is asked for by reads only.
    assert_eq!(
        request_info("DELETE", "/api/v1/namespaces/a/pods", Some("watch")).verb,
        "deletecollection"
    );
    // Hostile queries are read to the end, however many pairs come first.
    let q = format!("{}watch=yes", "a&".repeat(10_000));
    assert!(is_watch_query(Some(&q)));
}

#[test]
fn namespace_subresources_are_the_namespaces_own() {
    for sub in ["finalize", "status"] {
        let i = request_info("PUT", &format!("/api/v1/namespaces/victim/{sub}"), None);
        assert_eq!(
            (
                i.verb.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str(),
                i.namespace.as_str()
            ),
            ("update", "namespaces", "victim", sub, "victim"),
        );
    }
    // Any other third segment is a resource in the namespace.
    let i = request_info("GET", "/api/v1/namespaces/a/pods/p/status", None);
    assert_eq!(
        (
            i.resource.as_str(),
            i.name.as_str(),
            i.subresource.as_str(),
            i.namespace.as_str()
        ),
        ("pods", "p", "status", "a"),
    );
    let i = request_info("GET", "/api/v1/namespaces/status", None);
    assert_eq!(
        (i.resource.as_str(), i.name.as_str(), i.namespace.as_str()),
        ("namespaces", "status", "status"),
    );
    let i = request_info("GET", "/api/v1/namespaces", None);
    assert_eq!(
        (i.verb.as_str(), i.resource.as_str(), i.namespace.as_str()),
        ("list", "namespaces", ""),
    );
}

#[test]
fn a_field_selector_on_the_name_names_what_a_list_reads() {
    let named = |q: &str| request_info("GET", "/api/v1/namespaces/a/secrets", Some(q));
    let i = named("fieldSelector=metadata.name%3Ddb-pass");
    assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "db-pass"));
    let i = named("watch=1&fieldSelector=metadata.name%3D%3Ddb-pass");
    assert_eq!((i.verb.as_str(), i.name.as_str()), ("watch", "db-pass"));
    // Terms are sorted, as the API server sorts them, and escapes undone.
    assert_eq!(
        named("fieldSelector=type%3Dx,metadata.name%3Db,metadata.name%3Da").name,
        "a"
    );
    assert_eq!(named("fieldSelector=metadata.name%3Da%5C%2Cb").name, "a,b");
    for q in [
        "fieldSelector=metadata.name!%3Da",
        "fieldSelector=metadata.namespace%3Da",
        "fieldSelector=metadata.name%3D",
        "fieldSelector=metadata.name%3D..",
        "fieldSelector=metadata.name%3Da%2Fb",
        // One term the API server cannot parse: no selector at all.
        "fieldSelector=metadata.name%3Da,oops",
        "fieldSelector=metadata.name%3Da%5Cx",
        "labelSelector=metadata.name%3Da",
    ] {
        assert_eq!(named(q).name, "", "{q}");
    }
    // Only lists and watches: a named read keeps its own name.
    let i = request_info(
        "GET",
        "/api/v1/namespaces/a/secrets/s",
        Some("fieldSelector=metadata.name%3Dother"),
    );
    assert_eq!((i.verb.as_str(), i.name.as_str()), ("get", "s"));
    let i = request_info(
        "DELETE",
        "/api/v1/namespaces/a/secrets",
        Some("fieldSelector=metadata.name%3Dx"),
    );
    assert_eq!((i.verb.as_str(), i.name.as_str()), ("deletecollection", ""));
}

#[test]
fn hostile_paths_are_bounded_and_never_panic() {
    let long = "x".repeat(100_000);
    let i = request_info(
        "GET",
        &format!("/api/v1/namespaces/{long}/pods/{long}"),
        None,
    );
    assert!(i.namespace.len() <= MAX_PART && i.name.len() <= MAX_PART);
    assert!(i.path.len() <= MAX_PART);
    for p in [
        "",
        "/",
        "//",
        "/api",
        "/apis/",
        "/api//",
        "/apis/g//x/\u{0}/\n",
    ] {
        let i = request_info("GET", p, Some("watch"));
        assert!(!i.name.contains('\n') && !i.name.contains('\u{0}'));
    }
    let i = request_info(&"M".repeat(500), "/api/v1/pods", None);
    assert!(i.verb.len() <= 32);
    // Found by the fuzzer: a long method on a path that is not a resource.
    let i = request_info(&"m".repeat(40), "/api/vo", None);
    assert!(i.verb.chars().count() <= 32);
}

#[test]
fn no_credential_or_identity_of_the_client_crosses() {
    use http::HeaderValue;
    let mut h = http::HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static("Bearer x"));
    h.insert("impersonate-user", HeaderValue::from_static("system:admin"));
    h.append(
        "impersonate-group",
        HeaderValue::from_static("system:masters"),
    );
    h.insert("impersonate-extra-scopes", HeaderValue::from_static("x"));
    h.insert("postern-kube-user", HeaderValue::from_static("root"));
    h.insert("x-remote-user", HeaderValue::from_static("admin"));
    h.insert("connection", HeaderValue::from_static("close, x-secret"));
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    let kept = forwardable_headers(&h);
    assert_eq!(
        kept.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        vec!["accept"]
    );
    retain_forwardable(&mut h);
    assert_eq!(h, kept);
}

#[test]
fn groups_are_checked_and_defaults_name_the_role() {
    assert_eq!(default_group(Role::ReadOnly), "postern:read_only");
    assert!(check_group("postern:read_only").is_ok());
    assert!(check_group("team-a@corp/dev").is_ok());
    assert!(check_group("").is_err());
    assert!(check_group("system:masters").is_err());
    assert!(check_group("a b").is_err());
    assert!(check_group("a\r\nImpersonate-User: x").is_err());
    assert!(check_group(&"g".repeat(129)).is_err());
}
