//! Compiling a rule's `matches`: path, method, header and query matches,
//! regular expressions anchored to the whole value.

use http::{HeaderName, Method};
use regex::Regex;

use super::{Checked, invalid, unsupported};
use crate::route::raw::{RawMatch, RawNamedMatch};
use crate::route::{HeaderMatch, PathMatch, QueryMatch, RouteMatch, StringMatch};

pub(super) fn compile_match(raw: RawMatch, path: &str) -> Checked<RouteMatch> {
    let path_match = match raw.path {
        None => PathMatch::Prefix("/".to_owned()),
        Some(p) => {
            let value = p.value.unwrap_or_else(|| "/".to_owned());
            let field = format!("{path}.path.value");
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" | "PathPrefix" if !value.starts_with('/') => {
                    return Err(invalid(field, format!("{value:?} does not start with /")));
                }
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::Prefix(value),
                "RegularExpression" => PathMatch::Regex(anchored(&value, &field)?),
                other => {
                    return Err(unsupported(
                        format!("{path}.path.type"),
                        format!("{other:?} is not Exact, PathPrefix or RegularExpression"),
                    ));
                }
            }
        }
    };
    let headers = raw
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = format!("{path}.headers[{i}]");
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                invalid(
                    format!("{field}.name"),
                    format!("{:?} is not a header name", h.name),
                )
            })?;
            Ok(HeaderMatch {
                name,
                value: string_match(h, &field)?,
            })
        })
        .collect::<Checked<Vec<_>>>()?;
    let query = raw
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let field = format!("{path}.queryParams[{i}]");
            Ok(QueryMatch {
                name: q.name.clone(),
                value: string_match(q, &field)?,
            })
        })
        .collect::<Checked<Vec<_>>>()?;
    let method = raw
        .method
        .map(|m| {
            const METHODS: &[&str] = &[
                "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            ];
            if METHODS.contains(&m.as_str()) {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| invalid(format!("{path}.method"), "bad method"))
            } else {
                Err(invalid(
                    format!("{path}.method"),
                    format!("{m:?} is not one of {METHODS:?}"),
                ))
            }
        })
        .transpose()?;
    Ok(RouteMatch {
        path: path_match,
        headers,
        query,
        method,
    })
}

pub(super) fn string_match(raw: &RawNamedMatch, field: &str) -> Checked<StringMatch> {
    match raw.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(StringMatch::Exact(raw.value.clone())),
        "RegularExpression" => Ok(StringMatch::Regex(anchored(
            &raw.value,
            &format!("{field}.value"),
        )?)),
        other => Err(unsupported(
            format!("{field}.type"),
            format!("{other:?} is not Exact or RegularExpression"),
        )),
    }
}

/// A regular expression that must match the whole value.
fn anchored(pattern: &str, field: &str) -> Checked<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        invalid(
            field,
            format!("{pattern:?} is not a valid regular expression: {e}"),
        )
    })
}
