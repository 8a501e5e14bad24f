//! `TokenReview`: the API server's answer to "whose token is this?", for the
//! tokens a test registers, with the audience check of projected tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::status::{self, Body};

/// The audience a review without `spec.audiences` is checked against: the
/// API server's own, as on a default cluster.
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The `extra` key under which a projected token names its pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Where a review names the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// The tokens the server recognises.
#[derive(Default)]
pub(crate) struct TokenRegistry {
    tokens: Mutex<HashMap<String, TokenOwner>>,
}

#[derive(Clone, Debug)]
struct TokenOwner {
    username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
    audiences: Vec<String>,
}

// === impl TokenRegistry ===

impl TokenRegistry {
    /// Makes `token` authenticate as `username` for `audiences`; a
    /// `node_name` is reported in `extra`, as for a pod-bound token.
    pub(crate) fn register(
        &self,
        token: &str,
        username: &str,
        audiences: &[&str],
        node_name: Option<&str>,
        pod_name: Option<&str>,
    ) {
        let mut groups = Vec::new();
        if let Some(rest) = username.strip_prefix("system:serviceaccount:")
            && let Some((namespace, _)) = rest.split_once(':')
        {
            groups.push("system:serviceaccounts".to_owned());
            groups.push(format!("system:serviceaccounts:{namespace}"));
        }
        groups.push("system:authenticated".to_owned());
        let extra = node_name
            .map(|node| (NODE_NAME_EXTRA.to_owned(), vec![node.to_owned()]))
            .into_iter()
            .chain(pod_name.map(|pod| (POD_NAME_EXTRA.to_owned(), vec![pod.to_owned()])))
            .collect();
        let owner = TokenOwner {
            username: username.to_owned(),
            uid: stable_uid(username),
            groups,
            extra,
            audiences: audiences
                .iter()
                .map(|&audience| audience.to_owned())
                .collect(),
        };
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), owner);
    }

    /// Answers `POST .../tokenreviews`: the review, with its `status` filled in.
    pub(crate) fn review(&self, body: &[u8]) -> Response<Body> {
        let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
            return status::error_response(&status::failure(
                400,
                "BadRequest",
                "the body of a TokenReview must be JSON",
                None,
            ));
        };
        let Some(token) = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
        else {
            return status::error_response(&status::failure(
                422,
                "Invalid",
                "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
                None,
            ));
        };
        let requested: Vec<String> =
            match review.pointer("/spec/audiences").and_then(Value::as_array) {
                Some(audiences) if !audiences.is_empty() => audiences
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => vec![API_SERVER_AUDIENCE.to_owned()],
            };
        let owner = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned();
        review["status"] = match owner {
            None => json!({ "user": {}, "error": "[invalid bearer token, token lookup failed]" }),
            Some(owner) => {
                let matched: Vec<&String> = requested
                    .iter()
                    .filter(|audience| owner.audiences.contains(audience))
                    .collect();
                if matched.is_empty() {
                    json!({
                        "user": {},
                        "error": format!(
                            "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                            owner.audiences, requested
                        ),
                    })
                } else {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": owner.username,
                            "uid": owner.uid,
                            "groups": owner.groups,
                            "extra": owner.extra,
                        },
                        "audiences": matched,
                    })
                }
            }
        };
        review["apiVersion"] = json!("authentication.k8s.io/v1");
        review["kind"] = json!("TokenReview");
        status::json_response(StatusCode::CREATED, &review)
    }
}

/// A uid that stays the same for a user across registrations (FNV-1a).
fn stable_uid(username: &str) -> String {
    let hash = |seed: u64| {
        username.bytes().fold(seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let (high, low) = (hash(0xcbf2_9ce4_8422_2325), hash(0x8422_2325_cbf2_9ce4));
    super::objects::uuid(high, low)
}
