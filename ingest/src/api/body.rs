//! JSON bodies and query strings with errors that name the field, and a size limit
//! answered as JSON 413.

use super::error::ApiError;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// Query parameters, refused as JSON 422 naming the parameter (`?limit=abc` → field
/// `limit`) rather than with axum's plain-text rejection.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|error| {
                let field = error.path().to_string();
                let message = error.into_inner().to_string();
                let field = missing_field(&message)
                    .map(str::to_owned)
                    .unwrap_or_else(|| if field == "." { String::new() } else { field });
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", message)
                    .with_field(field)
            })
    }
}

/// Reads at most `limit` bytes, then parses. Syntax errors (including invalid UTF-8)
/// are 400; a well-formed document of the wrong shape is 422 naming the field.
pub async fn parse_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    parse_json_bytes(&read(body, limit).await?)
}

/// The body, if it is at most `limit` bytes; otherwise 413.
pub async fn read(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {limit} bytes"),
        )
    })
}

/// Like [`parse_json`], but an empty body means `T::default()`: for actions whose
/// options are all optional (`POST …/test`, `POST …/replay`).
pub async fn parse_optional_json<T: DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json_bytes(&bytes)
}

pub fn parse_json_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // The fast path: most bodies are valid. Only a failure is parsed again, with path
    // tracking, to name the field.
    if let Ok(parsed) = serde_json::from_slice(bytes) {
        return Ok(parsed);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // A shape error can surface before a syntax error later in the document; only a
        // document that is valid JSON as a whole gets the 422 (checked on this error path
        // alone, so valid bodies are parsed once).
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        match inner.classify() {
            serde_json::error::Category::Data if well_formed => {
                let message = inner.to_string();
                let field = missing_field(&message)
                    .map(|name| join_path(&path, name))
                    .unwrap_or_else(|| if path == "." { String::new() } else { path });
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    strip_position(&message),
                )
                .with_field(field)
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {inner}"),
            ),
        }
    })?;
    deserializer.end().map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {error}"),
        )
    })?;
    Ok(parsed)
}

/// serde names a missing field only in its message; the path stops at its parent.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "." {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// serde_json appends " at line L column C", which means nothing to an API caller
/// once the field is named.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        #[serde(rename = "type")]
        kind: String,
        nested: Option<Nested>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        count: u32,
    }

    #[test]
    fn classifies_errors() {
        let cases: [(&[u8], u16, &str); 8] = [
            (b"{", 400, ""),
            (b"not json", 400, ""),
            (b"[1,2", 400, ""),
            (b"{\"type\": \"\xff\"}", 400, ""),
            (b"{}", 422, "type"),
            (b"{\"type\": 5}", 422, "type"),
            (
                b"{\"type\": \"a\", \"nested\": {\"count\": -1}}",
                422,
                "nested.count",
            ),
            (b"{\"type\": \"a\", \"extra\": 1}", 422, "extra"),
        ];
        for (body, status, field) in cases {
            let error = parse_json_bytes::<Sample>(body).expect_err("invalid");
            assert_eq!(
                error.status().as_u16(),
                status,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                error.field().unwrap_or(""),
                field,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
