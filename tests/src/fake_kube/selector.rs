//! Label and field selectors, as the `labelSelector` and `fieldSelector` query
//! parameters of list and watch requests carry them.
//!
//! Label selectors take the full syntax of `kubectl -l`: `a=b`, `a==b`,
//! `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`, `a>1`, `a<1`, joined by
//! commas (AND). Field selectors take `field=value`, `field==value` and
//! `field!=value` over the fields the real API server supports for each
//! resource (see [`supported_fields`]); backslash escapes are not supported.

use serde_json::Value;

#[cfg(test)]
mod tests;

/// Why a selector was refused; the server answers `400 BadRequest`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label requirement that does not parse.
    #[error("unable to parse requirement {requirement:?} of label selector: {reason}")]
    Label {
        /// The offending requirement.
        requirement: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A field requirement that does not parse.
    #[error("invalid field selector requirement {requirement:?}: {reason}")]
    Field {
        /// The offending requirement.
        requirement: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A field the resource cannot be selected by.
    #[error("field label not supported: {field}")]
    UnsupportedField {
        /// The field, e.g. `spec.foo`.
        field: String,
    },
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LabelRequirement {
    key: String,
    operator: LabelOperator,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOperator {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

/// The fields a resource (by plural name) can be selected by, as the real
/// API server allows them.
#[must_use]
pub fn supported_fields(plural: &str) -> &'static [&'static str] {
    match plural {
        "pods" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "namespaces" => &["metadata.name", "status.phase"],
        "nodes" => &["metadata.name", "spec.unschedulable"],
        "services" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.clusterIP",
            "spec.type",
        ],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

// === impl LabelSelector ===

impl LabelSelector {
    /// Parses a selector such as `app=web,tier in (a,b),!canary`.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let requirements = split_top_level(selector)
            .into_iter()
            .map(LabelRequirement::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    #[must_use]
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.requirements.iter().all(|requirement| {
            let value = labels
                .and_then(|labels| labels.get(&requirement.key))
                .and_then(Value::as_str);
            requirement.operator.accepts(value)
        })
    }
}

/// Splits at commas outside parentheses; an empty selector has no parts.
fn split_top_level(selector: &str) -> Vec<&str> {
    if selector.trim().is_empty() {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut depth = 0_u32;
    let mut start = 0;
    for (index, character) in selector.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

// === impl LabelRequirement ===

impl LabelRequirement {
    fn parse(text: &str) -> Result<Self, SelectorError> {
        let error = |reason| SelectorError::Label {
            requirement: text.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        if let Some(key) = trimmed.strip_prefix('!') {
            let key = key.trim();
            check_key(key).map_err(error)?;
            return Ok(Self {
                key: key.to_owned(),
                operator: LabelOperator::DoesNotExist,
            });
        }
        let key_end = trimmed
            .find(|character: char| !is_key_char(character))
            .unwrap_or(trimmed.len());
        let (key, rest) = trimmed.split_at(key_end);
        check_key(key).map_err(error)?;
        let rest = rest.trim_start();
        let operator = if rest.is_empty() {
            LabelOperator::Exists
        } else if let Some(value) = rest.strip_prefix("!=") {
            LabelOperator::NotEquals(parse_value(value).map_err(error)?)
        } else if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
            LabelOperator::Equals(parse_value(value).map_err(error)?)
        } else if let Some(number) = rest.strip_prefix('>') {
            LabelOperator::GreaterThan(parse_integer(number).map_err(error)?)
        } else if let Some(number) = rest.strip_prefix('<') {
            LabelOperator::LessThan(parse_integer(number).map_err(error)?)
        } else if let Some(set) = strip_word(rest, "notin") {
            LabelOperator::NotIn(parse_set(set).map_err(error)?)
        } else if let Some(set) = strip_word(rest, "in") {
            LabelOperator::In(parse_set(set).map_err(error)?)
        } else {
            return Err(error(
                "expected one of =, ==, !=, in, notin, >, < after the key",
            ));
        };
        Ok(Self {
            key: key.to_owned(),
            operator,
        })
    }
}

// === impl LabelOperator ===

impl LabelOperator {
    /// Whether a label with this value (`None`: absent) satisfies it.
    fn accepts(&self, value: Option<&str>) -> bool {
        let number = || value.and_then(|value| value.parse::<i64>().ok());
        match self {
            Self::Equals(wanted) => value == Some(wanted.as_str()),
            // As in Kubernetes, `!=` and `notin` also match objects without the label.
            Self::NotEquals(unwanted) => value != Some(unwanted.as_str()),
            Self::In(set) => value.is_some_and(|value| set.iter().any(|item| item == value)),
            Self::NotIn(set) => !value.is_some_and(|value| set.iter().any(|item| item == value)),
            Self::Exists => value.is_some(),
            Self::DoesNotExist => value.is_none(),
            Self::GreaterThan(bound) => number().is_some_and(|number| number > *bound),
            Self::LessThan(bound) => number().is_some_and(|number| number < *bound),
        }
    }
}

fn is_key_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.' | '/')
}

fn check_key(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) if !prefix.is_empty() && !name.contains('/') => name,
        Some(_) => return Err("a key has at most one '/', after a non-empty prefix"),
        None => key,
    };
    if name.is_empty() || name.len() > 63 {
        return Err("a key's name must be 1 to 63 characters");
    }
    if !key.chars().all(is_key_char) {
        return Err("a key may hold only letters, digits, '-', '_', '.' and '/'");
    }
    Ok(())
}

fn parse_value(text: &str) -> Result<String, &'static str> {
    let value = text.trim();
    if value.len() > 63 {
        return Err("a value must be at most 63 characters");
    }
    if !value
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.'))
    {
        return Err("a value may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(value.to_owned())
}

fn parse_integer(text: &str) -> Result<i64, &'static str> {
    text.trim()
        .parse()
        .map_err(|_| "'>' and '<' need an integer value")
}

/// `rest` without a leading operator word that is followed by `(` or space.
fn strip_word<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(word)?;
    after
        .starts_with(|character: char| character == '(' || character.is_whitespace())
        .then_some(after)
}

fn parse_set(text: &str) -> Result<Vec<String>, &'static str> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|text| text.strip_suffix(')'))
        .ok_or("'in' and 'notin' need a parenthesised set of values")?;
    if inner.trim().is_empty() {
        return Err("'in' and 'notin' need at least one value");
    }
    inner.split(',').map(parse_value).collect()
}

// === impl FieldSelector ===

impl FieldSelector {
    /// Parses a selector such as `spec.nodeName=n1,metadata.name!=x`, refusing
    /// fields not in `supported`.
    pub fn parse(selector: &str, supported: &[&str]) -> Result<Self, SelectorError> {
        let requirements = split_top_level(selector)
            .into_iter()
            .map(|text| FieldRequirement::parse(text, supported))
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether the object's fields satisfy every requirement; a missing field
    /// reads as the empty string, as it does for the real server.
    #[must_use]
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|requirement| {
            let pointer = format!("/{}", requirement.field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == requirement.value) == requirement.equal
        })
    }
}

// === impl FieldRequirement ===

impl FieldRequirement {
    fn parse(text: &str, supported: &[&str]) -> Result<Self, SelectorError> {
        let error = |reason| SelectorError::Field {
            requirement: text.to_owned(),
            reason,
        };
        let (field, value, equal) = if let Some((field, value)) = text.split_once("!=") {
            (field, value, false)
        } else if let Some((field, value)) = text.split_once("==") {
            (field, value, true)
        } else if let Some((field, value)) = text.split_once('=') {
            (field, value, true)
        } else {
            return Err(error("expected field=value, field==value or field!=value"));
        };
        let field = field.trim();
        if field.is_empty() {
            return Err(error("the field name is empty"));
        }
        if !supported.contains(&field) {
            return Err(SelectorError::UnsupportedField {
                field: field.to_owned(),
            });
        }
        Ok(Self {
            field: field.to_owned(),
            value: value.trim().to_owned(),
            equal,
        })
    }
}
