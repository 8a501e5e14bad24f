//! Compiling a rule's `filters`: header modifiers, redirects and URL
//! rewrites; filters ambit does not implement are refused by name.

use http::{HeaderName, HeaderValue, StatusCode};

use super::{Checked, hostname, invalid, port, unsupported};
use crate::route::raw::{RawFilter, RawHeader, RawHeaderModifier, RawRedirect};
use crate::route::{Filter, HeaderModifier, PathRewrite, Redirect};

pub(super) fn compile_filter(raw: &RawFilter, path: &str) -> Checked<Filter> {
    let missing = |field: &str| {
        invalid(
            format!("{path}.{field}"),
            format!("type {} needs {field}", raw.kind),
        )
    };
    match raw.kind.as_str() {
        "RequestHeaderModifier" => Ok(Filter::RequestHeaders(header_modifier(
            raw.request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?,
            &format!("{path}.requestHeaderModifier"),
        )?)),
        "ResponseHeaderModifier" => Ok(Filter::ResponseHeaders(header_modifier(
            raw.response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?,
            &format!("{path}.responseHeaderModifier"),
        )?)),
        "RequestRedirect" => Ok(Filter::Redirect(redirect(
            raw.request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?,
            &format!("{path}.requestRedirect"),
        )?)),
        other => Err(unsupported(
            format!("{path}.type"),
            format!(
                "filter {other} is not supported (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect)"
            ),
        )),
    }
}

fn header_modifier(raw: &RawHeaderModifier, path: &str) -> Checked<HeaderModifier> {
    let pairs = |list: &[RawHeader], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                let at = format!("{path}.{field}[{i}]");
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    invalid(
                        format!("{at}.name"),
                        format!("{:?} is not a header name", h.name),
                    )
                })?;
                let value = HeaderValue::from_str(&h.value).map_err(|_| {
                    invalid(
                        format!("{at}.value"),
                        format!("{:?} is not a header value", h.value),
                    )
                })?;
                Ok((name, value))
            })
            .collect::<Checked<Vec<_>>>()
    };
    Ok(HeaderModifier {
        set: pairs(&raw.set, "set")?,
        add: pairs(&raw.add, "add")?,
        remove: raw
            .remove
            .iter()
            .enumerate()
            .map(|(i, name)| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(
                        format!("{path}.remove[{i}]"),
                        format!("{name:?} is not a header name"),
                    )
                })
            })
            .collect::<Checked<Vec<_>>>()?,
    })
}

fn redirect(raw: &RawRedirect, path: &str) -> Checked<Redirect> {
    if let Some(scheme) = &raw.scheme
        && !matches!(scheme.as_str(), "http" | "https")
    {
        return Err(invalid(
            format!("{path}.scheme"),
            format!("{scheme:?} is not http or https"),
        ));
    }
    let status = match raw.status_code.unwrap_or(302) {
        code @ (301 | 302 | 303 | 307 | 308) => {
            StatusCode::from_u16(u16::try_from(code).unwrap_or(302)).unwrap_or(StatusCode::FOUND)
        }
        code => {
            return Err(invalid(
                format!("{path}.statusCode"),
                format!("{code} is not 301, 302, 303, 307 or 308"),
            ));
        }
    };
    let rewrite = raw
        .path
        .as_ref()
        .map(|p| {
            let at = format!("{path}.path");
            let value = |v: &Option<String>, field: &str| {
                v.clone()
                    .filter(|v| v.starts_with('/'))
                    .ok_or_else(|| invalid(format!("{at}.{field}"), "needs a path starting with /"))
            };
            match p.kind.as_str() {
                "ReplaceFullPath" => Ok(PathRewrite::Full(value(
                    &p.replace_full_path,
                    "replaceFullPath",
                )?)),
                "ReplacePrefixMatch" => Ok(PathRewrite::Prefix(value(
                    &p.replace_prefix_match,
                    "replacePrefixMatch",
                )?)),
                other => Err(invalid(
                    format!("{at}.type"),
                    format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
                )),
            }
        })
        .transpose()?;
    Ok(Redirect {
        scheme: raw.scheme.clone(),
        hostname: raw
            .hostname
            .as_ref()
            .map(|h| hostname(h).map_err(|m| invalid(format!("{path}.hostname"), m)))
            .transpose()?,
        path: rewrite,
        port: raw
            .port
            .map(|p| port(p).map_err(|m| invalid(format!("{path}.port"), m)))
            .transpose()?,
        status,
    })
}
