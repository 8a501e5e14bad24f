//! Workload identities: SPIFFE ids of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! A [`SpiffeId`] is validated once, when it is made, so code that holds one
//! never re-checks it. Parsing is strict: ids come from certificates a peer
//! sent, and anything that is not exactly the shape above (another scheme,
//! extra path segments, percent-encoding, a query, a port, userinfo) is
//! rejected rather than normalised, so that two spellings can never name the
//! same workload.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// The trust domain used when none is configured, as in Istio and Linkerd.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME: &str = "spiffe://";
/// The SPIFFE specification's limit for a trust domain name.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Kubernetes' limit for a DNS subdomain name (namespaces are shorter still).
const MAX_NAME_LEN: usize = 253;

/// Why a SPIFFE id, or a part of one, was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A whole id did not parse.
    #[error(
        "invalid SPIFFE id {id:?}: {reason} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
    )]
    Invalid {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One part given to [`SpiffeId::new`] is not valid.
    #[error("invalid {part} {value:?} for a SPIFFE id: {reason}")]
    InvalidPart {
        /// Which part: "trust domain", "namespace" or "service account".
        part: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Serialised as its URI string; deserialising validates it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: Arc<str>,
    namespace: Arc<str>,
    service_account: Arc<str>,
}

/// Checks a trust domain name on its own, e.g. one from configuration,
/// before any id is made with it.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    check_trust_domain(trust_domain).map_err(|reason| IdentityError::InvalidPart {
        part: "trust domain",
        value: trust_domain.to_owned(),
        reason,
    })
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Builds an id from its parts, validating each: the trust domain may hold
    /// lowercase letters, digits, `.`, `-` and `_`; the namespace and service
    /// account must be Kubernetes names (lowercase letters, digits, `-` and
    /// `.`, starting and ending with a letter or digit, at most 253 long).
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let invalid = |part, value: &str, reason| IdentityError::InvalidPart {
            part,
            value: value.to_owned(),
            reason,
        };
        check_trust_domain(trust_domain).map_err(|r| invalid("trust domain", trust_domain, r))?;
        check_kubernetes_name(namespace).map_err(|r| invalid("namespace", namespace, r))?;
        check_kubernetes_name(service_account)
            .map_err(|r| invalid("service account", service_account, r))?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    #[must_use]
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    #[must_use]
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The id as a URI string, the same text as `Display`.
    #[must_use]
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| IdentityError::Invalid {
            id: id.to_owned(),
            reason,
        };
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("the scheme must be spiffe:// (lowercase)".into()))?;
        // Checked on the whole rest before splitting, so the reason names the
        // real problem rather than a bad character in whichever part holds it.
        if rest.contains(['?', '#']) {
            return Err(invalid("a query or fragment is not allowed".into()));
        }
        if rest.contains('%') {
            return Err(invalid("percent-encoding is not allowed".into()));
        }
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("there is no path after the trust domain".into()))?;
        if trust_domain.contains('@') {
            return Err(invalid("userinfo (user@) is not allowed".into()));
        }
        if trust_domain.contains(':') {
            return Err(invalid("a port is not allowed".into()));
        }
        check_trust_domain(trust_domain)
            .map_err(|reason| invalid(format!("the trust domain {trust_domain:?} {reason}")))?;
        let segments: Vec<&str> = path.split('/').collect();
        let ["ns", namespace, "sa", service_account] = segments.as_slice() else {
            return Err(invalid(format!(
                "the path /{path} is not /ns/<namespace>/sa/<service-account>"
            )));
        };
        check_kubernetes_name(namespace)
            .map_err(|reason| invalid(format!("the namespace {namespace:?} {reason}")))?;
        check_kubernetes_name(service_account).map_err(|reason| {
            invalid(format!("the service account {service_account:?} {reason}"))
        })?;
        Ok(Self {
            trust_domain: trust_domain.into(),
            namespace: (*namespace).into(),
            service_account: (*service_account).into(),
        })
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdentityError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        id.parse()
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.uri()
    }
}

/// Checks a trust domain against the SPIFFE specification's alphabet.
fn check_trust_domain(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("is longer than 255 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("may hold only lowercase letters, digits, '.', '-' and '_'");
    }
    Ok(())
}

/// Checks a namespace or service-account name against Kubernetes' rules for
/// a DNS subdomain name. These also rule out the path segments `.` and `..`.
fn check_kubernetes_name(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > MAX_NAME_LEN {
        return Err("is longer than 253 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
    {
        return Err("may hold only lowercase letters, digits, '-' and '.'");
    }
    let alphanumeric =
        |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alphanumeric(value.bytes().next()) || !alphanumeric(value.bytes().last()) {
        return Err("must start and end with a lowercase letter or digit");
    }
    Ok(())
}
