use super::*;

#[test]
fn new_formats_and_parses_back() {
    let id = SpiffeId::new("cluster.local", "default", "client").unwrap();
    assert_eq!(id.trust_domain(), "cluster.local");
    assert_eq!(id.namespace(), "default");
    assert_eq!(id.service_account(), "client");
    assert_eq!(id.uri(), "spiffe://cluster.local/ns/default/sa/client");
    assert_eq!(id.to_string(), id.uri());
    assert_eq!(id.uri().parse::<SpiffeId>().unwrap(), id);
}

#[test]
fn accepted_ids_round_trip() {
    for text in [
        "spiffe://cluster.local/ns/default/sa/default",
        "spiffe://example.org/ns/kube-system/sa/coredns",
        "spiffe://td_with-all.chars9/ns/a/sa/0",
        "spiffe://x/ns/my.dotted.ns/sa/sa-1.v2",
    ] {
        let id: SpiffeId = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(id.to_string(), text);
    }
}

#[test]
fn serde_uses_the_uri_string_and_validates() {
    let id = SpiffeId::new(DEFAULT_TRUST_DOMAIN, "prod", "api").unwrap();
    let yaml = serde_yaml::to_string(&id).unwrap();
    assert_eq!(yaml.trim(), "spiffe://cluster.local/ns/prod/sa/api");
    assert_eq!(serde_yaml::from_str::<SpiffeId>(&yaml).unwrap(), id);
    let error = serde_yaml::from_str::<SpiffeId>("spiffe://cluster.local/ns/prod").unwrap_err();
    assert!(error.to_string().contains("invalid SPIFFE id"), "{error}");
}

#[test]
fn rejected_ids_say_why() {
    let long = "a".repeat(254);
    let long_ns = format!("spiffe://td/ns/{long}/sa/x");
    let long_td = format!("spiffe://{}/ns/a/sa/b", "t".repeat(256));
    let cases: &[(&str, &str)] = &[
        ("", "scheme"),
        ("cluster.local/ns/a/sa/b", "scheme"),
        ("https://cluster.local/ns/a/sa/b", "scheme"),
        ("SPIFFE://cluster.local/ns/a/sa/b", "scheme"),
        ("spiffe:/cluster.local/ns/a/sa/b", "scheme"),
        ("spiffe://cluster.local", "no path"),
        ("spiffe://", "no path"),
        ("spiffe:///ns/a/sa/b", "trust domain \"\" is empty"),
        ("spiffe://cluster.local/", "path"),
        ("spiffe://cluster.local/ns/a", "path"),
        ("spiffe://cluster.local/ns/a/sa", "path"),
        ("spiffe://cluster.local/ns/a/sa/b/extra", "path"),
        ("spiffe://cluster.local/ns/a/sa/b/", "path"),
        ("spiffe://cluster.local//ns/a/sa/b", "path"),
        ("spiffe://cluster.local/sa/b/ns/a", "path"),
        ("spiffe://cluster.local/NS/a/sa/b", "path"),
        ("spiffe://cluster.local/ns//sa/b", "namespace \"\" is empty"),
        (
            "spiffe://cluster.local/ns/a/sa/",
            "service account \"\" is empty",
        ),
        ("spiffe://Cluster.local/ns/a/sa/b", "lowercase"),
        ("spiffe://clu ster/ns/a/sa/b", "lowercase"),
        ("spiffe://cluster.local/ns/Default/sa/b", "lowercase"),
        ("spiffe://cluster.local/ns/a_b/sa/b", "lowercase"),
        ("spiffe://cluster.local/ns/a/sa/b c", "lowercase"),
        ("spiffe://cluster.local/ns/a/sa/ü", "lowercase"),
        ("spiffe://cluster.local/ns/-a/sa/b", "start and end"),
        ("spiffe://cluster.local/ns/a/sa/b-", "start and end"),
        ("spiffe://cluster.local/ns/./sa/b", "start and end"),
        ("spiffe://cluster.local/ns/../sa/b", "start and end"),
        ("spiffe://cluster.local/ns/a%2Fb/sa/c", "percent"),
        ("spiffe://cluster%2Elocal/ns/a/sa/b", "percent"),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", "query"),
        ("spiffe://cluster.local/ns/a/sa/b#frag", "fragment"),
        ("spiffe://cluster.local:8443/ns/a/sa/b", "port"),
        ("spiffe://user@cluster.local/ns/a/sa/b", "userinfo"),
        ("spiffe://user:pw@cluster.local/ns/a/sa/b", "userinfo"),
        (&long_ns, "longer than 253"),
        (&long_td, "longer than 255"),
    ];
    for (text, expected) in cases {
        let error = text
            .parse::<SpiffeId>()
            .expect_err(&format!("{text:?} should be rejected"));
        let message = error.to_string();
        assert!(
            message.contains(expected),
            "{text:?}: expected {expected:?} in {message:?}"
        );
        assert!(
            message.contains(&format!("{text:?}")),
            "{text:?}: the error should name the input: {message}"
        );
    }
}

#[test]
fn new_rejects_bad_parts_naming_them() {
    let cases = [
        ("", "a", "b", "trust domain"),
        ("td:1", "a", "b", "trust domain"),
        ("td", "", "b", "namespace"),
        ("td", "a/b", "c", "namespace"),
        ("td", "a", "B", "service account"),
        ("td", "a", "..", "service account"),
    ];
    for (trust_domain, namespace, service_account, part) in cases {
        let error = SpiffeId::new(trust_domain, namespace, service_account).unwrap_err();
        assert!(
            matches!(&error, IdentityError::InvalidPart { part: p, .. } if *p == part),
            "{trust_domain}/{namespace}/{service_account}: {error}"
        );
    }
}

#[test]
fn ordering_and_equality_follow_the_parts() {
    let a = SpiffeId::new("td", "a", "x").unwrap();
    let b = SpiffeId::new("td", "b", "a").unwrap();
    assert!(a < b);
    assert_ne!(a, b);
    assert_eq!(a, "spiffe://td/ns/a/sa/x".parse().unwrap());
}
