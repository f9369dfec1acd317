//! The web console under `/console/`: three static files compiled into the binary, so
//! it works offline and needs nothing deployed beside ingest. The page is a client of
//! the `/v1` API; the files themselves hold no data and need no token.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Only this origin's script and style; the API is same-origin. Who may frame the page
/// is the installation's choice (`api.console_frame_ancestors`), appended to this.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'";

/// Checks `api.console_frame_ancestors` and returns the sources as they go into the
/// header: `'none'` alone, or any of `'self'` and `http(s)://host[:port]` origins (the
/// host may start with `*.`). Nothing else is accepted, so the value can neither add a
/// directive (`;`), nor break the header, nor allow framing by every site.
pub fn frame_ancestors(value: &str) -> Result<String, String> {
    let sources: Vec<&str> = value.split_ascii_whitespace().collect();
    match sources.as_slice() {
        [] => return Err("must be 'none' or list at least one source".to_owned()),
        ["'none'"] => return Ok("'none'".to_owned()),
        _ => {}
    }
    for source in &sources {
        if *source == "'none'" {
            return Err("'none' cannot be combined with other sources".to_owned());
        }
        if *source != "'self'" && !is_origin(source) {
            return Err(format!(
                "`{source}` is not 'none', 'self' or an http(s) origin such as \
                 https://ats.example.com or https://*.ats.example"
            ));
        }
    }
    Ok(sources.join(" "))
}

fn is_origin(source: &str) -> bool {
    let Some(authority) = source
        .strip_prefix("https://")
        .or_else(|| source.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    });
    let host = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    port_ok && host.len() <= 253 && host.split('.').all(label_ok)
}

/// The console's whole policy. A value that does not pass [`frame_ancestors`] (settings
/// validation refuses it before this runs) forbids framing.
pub fn content_security_policy(frame_ancestors_setting: &str) -> HeaderValue {
    let sources = frame_ancestors(frame_ancestors_setting).unwrap_or_else(|_| "'none'".into());
    HeaderValue::try_from(format!(
        "{CONTENT_SECURITY_POLICY}; frame-ancestors {sources}"
    ))
    .unwrap_or_else(|_| {
        HeaderValue::from_static(concat!(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; ",
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ))
    })
}

pub fn router<S: Clone + Send + Sync + 'static>(frame_ancestors_setting: &str) -> Router<S> {
    let policy = content_security_policy(frame_ancestors_setting);
    let serve = move |body: &'static str, content_type: &'static str| {
        let policy = policy.clone();
        get(move || async move { asset(body, content_type, policy) })
    };
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", serve(INDEX, "text/html; charset=utf-8"))
        .route(
            "/console/console.js",
            serve(SCRIPT, "text/javascript; charset=utf-8"),
        )
        .route(
            "/console/console.css",
            serve(STYLE, "text/css; charset=utf-8"),
        )
}

fn asset(body: &'static str, content_type: &'static str, policy: HeaderValue) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Assets change with the binary; a short cache keeps upgrades visible.
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
            (HeaderName::from_static("content-security-policy"), policy),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_accept_only_none_self_and_origins() {
        let cases = [
            ("'none'", Ok("'none'")),
            ("  'none'  ", Ok("'none'")),
            ("'self'", Ok("'self'")),
            ("https://ats.example.com", Ok("https://ats.example.com")),
            (
                "'self'   https://*.ats.example\thttp://localhost:3000",
                Ok("'self' https://*.ats.example http://localhost:3000"),
            ),
            ("", Err("at least one")),
            ("   ", Err("at least one")),
            ("'none' https://ats.example.com", Err("cannot be combined")),
            // Attempts to add a directive or a header, or to allow every site.
            ("'none'; script-src *", Err("is not")),
            ("https://ats.example.com;script-src", Err("is not")),
            ("https://ats.example.com, https://b.example", Err("is not")),
            ("https://ats.example.com\r\nset-cookie: a=b", Err("is not")),
            ("*", Err("is not")),
            ("https:", Err("is not")),
            ("https://*", Err("is not")),
            ("'unsafe-inline'", Err("is not")),
            ("'NONE'", Err("is not")),
            ("javascript:alert(1)", Err("is not")),
            ("data:", Err("is not")),
            ("https://ats.example.com/path", Err("is not")),
            ("https://user@ats.example.com", Err("is not")),
            ("https://ats.example.com:", Err("is not")),
            ("https://ats.example.com:443x", Err("is not")),
            ("https://ats..example.com", Err("is not")),
            ("https://ats.exämple.com", Err("is not")),
            ("ftp://ats.example.com", Err("is not")),
        ];
        for (value, expected) in cases {
            match (frame_ancestors(value), expected) {
                (Ok(sources), Ok(wanted)) => assert_eq!(sources, wanted, "{value:?}"),
                (Err(problem), Err(wanted)) => {
                    assert!(problem.contains(wanted), "{value:?}: {problem}")
                }
                (got, _) => panic!("{value:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_policy_ends_with_exactly_one_frame_ancestors_directive() {
        let cases = [
            ("'none'", "frame-ancestors 'none'"),
            (
                "https://ats.example.com 'self'",
                "frame-ancestors https://ats.example.com 'self'",
            ),
            // Refused by settings validation; should it get here, framing is forbidden.
            ("'self'; script-src *", "frame-ancestors 'none'"),
        ];
        for (setting, wanted) in cases {
            let policy = content_security_policy(setting);
            let policy = policy.to_str().expect("ASCII");
            assert!(policy.starts_with("default-src 'none'; script-src 'self';"));
            assert!(policy.ends_with(wanted), "{setting:?}: {policy}");
            assert_eq!(policy.matches("frame-ancestors").count(), 1, "{policy}");
            assert_eq!(policy.matches("script-src").count(), 1, "{policy}");
        }
    }
}
