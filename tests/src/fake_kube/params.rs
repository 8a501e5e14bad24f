//! The query parameters of list and watch requests, and what they select.

use std::time::Duration;

use serde_json::{Value, json};

use super::objects::metadata_only;
use base64::Engine as _;

use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector, SelectorError, supported_fields};
use super::status;
use super::store::ObjectKey;

/// How long a watch without `timeoutSeconds` stays open (the real server
/// picks 30 to 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_mins(30);

/// The parameters of a list or watch request.
#[derive(Debug)]
pub(crate) struct ListParams {
    pub(crate) watch: bool,
    /// `limit`: a list answers at most this many objects and a `continue`
    /// token for the rest; 0 (or unset) for all of them in one page.
    pub(crate) limit: usize,
    /// `continue`: where the previous page of a list ended.
    pub(crate) continue_from: Option<ContinueToken>,
    /// `resourceVersion`, if set and not empty.
    pub(crate) resource_version: Option<String>,
    /// `resourceVersionMatch`: `Exact`, `NotOlderThan` or unset.
    pub(crate) exact: bool,
    pub(crate) bookmarks: bool,
    pub(crate) send_initial_events: Option<bool>,
    pub(crate) timeout: Duration,
    pub(crate) filter: Filter,
}

/// What a list or watch selects: a resource, perhaps one namespace, and the
/// label and field selectors.
#[derive(Debug)]
pub(crate) struct Filter {
    pub(crate) resource: &'static ResourceType,
    pub(crate) namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

/// Where a page of a list ended: the version the list shows and the last
/// key it answered. Clients treat it as opaque; here it is base64 JSON, as
/// the real server's is.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ContinueToken {
    #[serde(rename = "rv")]
    pub(crate) resource_version: u64,
    #[serde(rename = "ns")]
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// Whether the client asked for whole objects or only their metadata
/// (`Accept: application/json;as=PartialObjectMetadata;...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Projection {
    Full,
    MetadataOnly,
}

// === impl ListParams ===

impl ListParams {
    /// Parses the query string; a bad value yields the `Status` to answer.
    pub(crate) fn parse(
        query: &str,
        resource: &'static ResourceType,
        namespace: Option<String>,
    ) -> Result<Self, Value> {
        let mut params = Self {
            watch: false,
            limit: 0,
            continue_from: None,
            resource_version: None,
            exact: false,
            bookmarks: false,
            send_initial_events: None,
            timeout: DEFAULT_WATCH_TIMEOUT,
            filter: Filter {
                resource,
                namespace,
                labels: LabelSelector::default(),
                fields: FieldSelector::default(),
            },
        };
        let selector_error = |error: SelectorError| status::for_selector_error(&error);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "watch" => params.watch = parse_bool(&key, &value)?,
                "allowWatchBookmarks" => params.bookmarks = parse_bool(&key, &value)?,
                "sendInitialEvents" => {
                    params.send_initial_events = Some(parse_bool(&key, &value)?);
                }
                "resourceVersion" if !value.is_empty() => {
                    params.resource_version = Some(value.into_owned());
                }
                "limit" => {
                    params.limit = value.parse().map_err(|_| bad_value(&key, &value))?;
                }
                "continue" if !value.is_empty() => {
                    params.continue_from = Some(ContinueToken::decode(&value)?);
                }
                "resourceVersionMatch" => params.exact = value == "Exact",
                "timeoutSeconds" => {
                    let seconds = value.parse::<u64>().map_err(|_| bad_value(&key, &value))?;
                    params.timeout = Duration::from_secs(seconds);
                }
                "labelSelector" => {
                    params.filter.labels = LabelSelector::parse(&value).map_err(selector_error)?;
                }
                "fieldSelector" => {
                    params.filter.fields =
                        FieldSelector::parse(&value, supported_fields(resource.plural))
                            .map_err(selector_error)?;
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// The requested resourceVersion as a number; `None` for unset or `"0"`
    /// ("any version", which this server answers with the newest).
    pub(crate) fn resource_version_number(&self) -> Result<Option<u64>, Value> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| bad_value("resourceVersion", text)),
        }
    }
}

// === impl ContinueToken ===

impl ContinueToken {
    /// The token that resumes a list after `key` at `resource_version`.
    pub(crate) fn after(key: &ObjectKey, resource_version: u64) -> Self {
        Self {
            resource_version,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
    }

    /// The key after which the next page starts.
    pub(crate) fn key(&self, resource: &ResourceType) -> ObjectKey {
        ObjectKey {
            resource: resource.plural,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    pub(crate) fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a token; a damaged one is the real server's `400`.
    fn decode(text: &str) -> Result<Self, Value> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(|| {
                status::failure(
                    400,
                    "BadRequest",
                    &format!("continue key is not valid: {text:?}"),
                    None,
                )
            })
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, Value> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(bad_value(key, value)),
    }
}

fn bad_value(key: &str, value: &str) -> Value {
    status::failure(
        400,
        "BadRequest",
        &format!("invalid value {value:?} for query parameter {key}"),
        None,
    )
}

// === impl Filter ===

impl Filter {
    /// Whether `object` is in the namespace and satisfies both selectors.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        self.namespace
            .as_deref()
            .is_none_or(|wanted| namespace == Some(wanted))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

// === impl Projection ===

impl Projection {
    /// Reads the `Accept` header.
    pub(crate) fn from_accept(accept: Option<&str>) -> Self {
        if accept.is_some_and(|accept| accept.contains("as=PartialObjectMetadata")) {
            Self::MetadataOnly
        } else {
            Self::Full
        }
    }

    /// The object as the client asked to see it.
    pub(crate) fn object(self, object: Value) -> Value {
        match self {
            Self::Full => object,
            Self::MetadataOnly => metadata_only(&object),
        }
    }

    /// A list of `items` at `resource_version`, with the token of the next
    /// page if one follows.
    pub(crate) fn list(
        self,
        resource: &ResourceType,
        items: Vec<Value>,
        resource_version: u64,
        next: Option<&ContinueToken>,
    ) -> Value {
        let (api_version, kind) = match self {
            Self::Full => (resource.api_version(), resource.list_kind()),
            Self::MetadataOnly => (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadataList".to_owned(),
            ),
        };
        let items: Vec<Value> = items.into_iter().map(|item| self.object(item)).collect();
        let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
        if let Some(next) = next {
            metadata["continue"] = Value::String(next.encode());
        }
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": metadata,
            "items": items,
        })
    }
}
