use serde_json::{Value, json};

use super::{FieldSelector, LabelSelector, SelectorError, supported_fields};

fn pod(labels: &Value, node: Option<&str>) -> Value {
    json!({
        "metadata": { "name": "a", "namespace": "default", "labels": labels },
        "spec": { "nodeName": node, "hostNetwork": false },
    })
}

fn labels_match(selector: &str, labels: &Value) -> bool {
    LabelSelector::parse(selector)
        .unwrap_or_else(|error| panic!("{selector:?}: {error}"))
        .matches(&pod(labels, None))
}

#[test]
fn equality_requirements() {
    let labels = json!({ "app": "web", "tier": "front" });
    assert!(labels_match("app=web", &labels));
    assert!(labels_match("app==web", &labels));
    assert!(labels_match(" app = web , tier=front ", &labels));
    assert!(!labels_match("app=db", &labels));
    assert!(!labels_match("app=web,tier=back", &labels), "comma is AND");
    assert!(labels_match("app!=db", &labels));
    assert!(!labels_match("app!=web", &labels));
    assert!(
        labels_match("other!=x", &labels),
        "!= matches a missing label"
    );
    assert!(!labels_match("other=", &labels), "= needs the label");
    assert!(labels_match("empty=", &json!({ "empty": "" })));
}

#[test]
fn existence_requirements() {
    let labels = json!({ "app": "web", "example.com/role": "x" });
    assert!(labels_match("app", &labels));
    assert!(labels_match("example.com/role", &labels));
    assert!(!labels_match("canary", &labels));
    assert!(labels_match("!canary", &labels));
    assert!(labels_match("! canary", &labels));
    assert!(!labels_match("!app", &labels));
    assert!(!labels_match("app,!app", &labels));
}

#[test]
fn set_requirements() {
    let labels = json!({ "env": "prod", "app": "web" });
    assert!(labels_match("env in (prod,staging)", &labels));
    assert!(labels_match("env in (staging, prod)", &labels));
    assert!(labels_match("env in(prod)", &labels));
    assert!(!labels_match("env in (dev)", &labels));
    assert!(!labels_match("zone in (a)", &labels), "in needs the label");
    assert!(labels_match("env notin (dev,qa)", &labels));
    assert!(!labels_match("env notin (prod)", &labels));
    assert!(
        labels_match("zone notin (a)", &labels),
        "notin matches a missing label"
    );
    assert!(
        labels_match("env in (prod,staging),app=web", &labels),
        "commas inside sets do not split"
    );
    assert!(!labels_match("env in (prod,staging),app=db", &labels));
}

#[test]
fn numeric_requirements() {
    let labels = json!({ "replicas": "3" });
    assert!(labels_match("replicas>2", &labels));
    assert!(!labels_match("replicas>3", &labels));
    assert!(labels_match("replicas<4", &labels));
    assert!(!labels_match("missing<4", &labels));
}

#[test]
fn empty_selector_matches_everything() {
    assert!(labels_match("", &json!({})));
    assert!(labels_match("  ", &json!({ "a": "b" })));
    assert!(
        LabelSelector::parse("")
            .expect("parses")
            .matches(&json!({}))
    );
}

#[test]
fn bad_label_selectors_are_refused() {
    for bad in [
        "app=web,",
        ",app",
        "app=we b",
        "app in prod",
        "app in ()",
        "app notin (a",
        "=web",
        "app==",
        "app>x",
        "a/b/c=d",
        "app ~ web",
    ] {
        if bad == "app==" {
            // `app==` is "app equals the empty string", as in Kubernetes.
            assert!(LabelSelector::parse(bad).is_ok(), "{bad:?} should parse");
            continue;
        }
        let error = LabelSelector::parse(bad).expect_err(bad);
        assert!(
            matches!(error, SelectorError::Label { .. }),
            "{bad:?}: {error:?}"
        );
    }
}

#[test]
fn field_selectors_on_pods() {
    let fields = supported_fields("pods");
    let on = |selector: &str, node: Option<&str>| {
        FieldSelector::parse(selector, fields)
            .unwrap_or_else(|error| panic!("{selector:?}: {error}"))
            .matches(&pod(&json!({}), node))
    };
    assert!(on("spec.nodeName=n1", Some("n1")));
    assert!(on("spec.nodeName==n1", Some("n1")));
    assert!(!on("spec.nodeName=n1", Some("n2")));
    assert!(!on("spec.nodeName=n1", None));
    assert!(on("spec.nodeName=", None), "a missing field reads as empty");
    assert!(on("spec.nodeName!=n1", Some("n2")));
    assert!(!on("spec.nodeName!=n1", Some("n1")));
    assert!(on("metadata.name=a,metadata.namespace=default", None));
    assert!(!on("metadata.name=a,metadata.namespace=other", None));
    assert!(
        on("spec.hostNetwork=false", None),
        "non-string fields compare as text"
    );
    assert!(on("", None));
}

#[test]
fn unsupported_and_bad_field_selectors_are_refused() {
    let error = FieldSelector::parse("spec.nodeName=n1", supported_fields("services"))
        .expect_err("services have no spec.nodeName");
    assert_eq!(
        error,
        SelectorError::UnsupportedField {
            field: "spec.nodeName".to_owned()
        }
    );
    assert_eq!(
        error.to_string(),
        "field label not supported: spec.nodeName"
    );
    for bad in ["metadata.name", "=x", "metadata.name=a,"] {
        let error = FieldSelector::parse(bad, supported_fields("pods")).expect_err(bad);
        assert!(
            matches!(error, SelectorError::Field { .. }),
            "{bad:?}: {error:?}"
        );
    }
}
