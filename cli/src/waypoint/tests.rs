use super::*;

fn target(namespace: &str, name: &str) -> Target {
    Target {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

#[test]
fn the_template_is_filled_in_everywhere() {
    let objects = objects(&target("shop", "wp"), "registry/wp:1").unwrap();
    let kinds: Vec<String> = objects.iter().map(object_ref).collect();
    assert_eq!(
        kinds,
        [
            "serviceaccount/wp",
            "clusterrolebinding/ambit-waypoint:shop:wp",
            "deployment/wp",
            "service/wp"
        ]
    );
    let text = serde_json::to_string(&objects).unwrap();
    for placeholder in ["\"NAME\"", ":NAME\"", "NAMESPACE"] {
        assert!(!text.contains(placeholder), "{placeholder} left in {text}");
    }
    let deployment = &objects[2];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry/wp:1");
    assert_eq!(
        container["args"],
        json!(["--kubernetes", "--name", "wp", "--namespace", "shop"])
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["ambit.dev/waypoint"],
        "wp"
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "wp"
    );
    assert_eq!(
        objects[1]["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "wp", "namespace": "shop"})
    );
    assert!(objects[1]["metadata"].get("namespace").is_none());
    // Strings that merely contain a placeholder are left alone.
    let mut value = json!({"a": "NAME_X", "b": "x:NAME", "c": ["NAMESPACE"]});
    fill(&mut value, "ns", "n");
    assert_eq!(value, json!({"a": "NAME_X", "b": "x:n", "c": ["ns"]}));
}

#[test]
fn names_must_be_dns_labels() {
    for good in ["waypoint", "wp-1", "a", &"x".repeat(63)] {
        assert!(parse_name(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "WP",
        "-wp",
        "wp-",
        "wp.x",
        "wp_x",
        "none",
        &"x".repeat(64),
    ] {
        assert!(parse_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn api_resources_follow_the_objects() {
    let objects = objects(&target("shop", "wp"), "i").unwrap();
    let plural: Vec<String> = objects.iter().map(|o| api_resource(o).plural).collect();
    assert_eq!(
        plural,
        [
            "serviceaccounts",
            "clusterrolebindings",
            "deployments",
            "services"
        ]
    );
    assert_eq!(api_resource(&objects[2]).api_version, "apps/v1");
}

#[test]
fn outcomes_and_listings_read_naturally() {
    let outcome = Outcome {
        namespace: "shop".into(),
        name: "wp".into(),
        objects: vec!["deployment/wp".into()],
        namespace_label: None,
        still_named_by: vec!["web".into()],
        ready_replicas: None,
    };
    let text = outcome_text(&outcome, "deleted");
    assert!(
        text.starts_with(
            "deployment/wp deleted\nnamespace/shop has no ambit.dev/use-waypoint label\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("fails closed until relabelled: web"),
        "{text}"
    );
    let table = list_table(&[Listed {
        namespace: "shop".into(),
        name: "wp".into(),
        ready_replicas: 1,
        replicas: 1,
        image: "i".into(),
        namespace_uses_it: true,
        services: vec!["a".into(), "b".into()],
        age_seconds: Some(65),
    }]);
    assert_eq!(
        table,
        "NAMESPACE  NAME  READY  USED BY                 AGE   IMAGE\nshop       wp    1/1    namespace (2 services)  1m5s  i\n"
    );
}
