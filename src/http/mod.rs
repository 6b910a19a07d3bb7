//! The HTTP faces of Cube: thin actix-web handlers that parse a request, forward it to an actor
//! and map the answer (or the actor's error) to JSON. No handler holds state of its own.

pub mod auth;
pub mod error;
pub mod events;
pub mod manager;
pub mod openapi;
pub mod services;
pub mod session;
pub mod ui;
pub mod worker;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

pub use error::ApiError;

/// Largest request body either API accepts; a task spec is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Largest body of a worker's `POST /starts`: a batch of task specs. The manager sends at most
/// [`crate::actors::client::BATCH_BYTES`] of them in one (plus one spec, which may be up to
/// [`MAX_BODY_BYTES`]).
pub const MAX_BATCH_BODY_BYTES: usize = 4 << 20;

/// Read a request body of at most [`MAX_BODY_BYTES`], answering 413 beyond it.
pub async fn read_body(req: &HttpRequest, payload: web::Payload) -> Result<web::Bytes, ApiError> {
    read_body_up_to(req, payload, MAX_BODY_BYTES, "one task spec").await
}

/// Read a request body of at most `limit` bytes, answering 413 beyond it (saying `expected`).
pub async fn read_body_up_to(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    expected: &str,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes; expected {expected}"),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    // A body that trickles in, or stops half-way, is given up on: the connection is closed
    // rather than held open for as long as the client likes.
    actix_rt::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s; expected it sent at once",
                    BODY_TIMEOUT.as_secs()
                ),
            ))
        })
}

/// Time a client has to send a request body once its head has arrived.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Query-string errors in the JSON shape. Every query struct takes its fields as strings and
/// the handler parses each with the helpers below, so what is left for this handler is a query
/// string serde cannot read at all: a field given twice.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, req| {
        let why = match &err {
            actix_web::error::QueryPayloadError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        ApiError::bad_request(format!(
            "the query string {} cannot be read ({why}); expected each field at most once",
            shown(req.query_string())
        ))
        .into()
    })
}

/// How many characters of a client's value an error message repeats.
const SHOWN_CHARS: usize = 40;

/// A client's value as an error message repeats it: control characters escaped, and cut after
/// [`SHOWN_CHARS`] characters so an absurd value does not come back in full.
pub fn shown(raw: &str) -> String {
    let mut out = String::new();
    for (i, c) in raw.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse the integer `field=raw` of a query string, which must lie in `range`. The error names
/// the field, the value and the range, and says whether the value was no number at all, a
/// number but not an integer (`1.5`, `1e99`), or an integer out of range (`-1`, `0`, `2^64`).
/// `note` (empty, or starting with a space) is added to the expectation.
pub fn integer<T>(
    field: &str,
    raw: &str,
    range: std::ops::RangeInclusive<T>,
    note: &str,
) -> Result<T, ApiError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let problem = match raw.parse::<T>() {
        Ok(v) if range.contains(&v) => return Ok(v),
        _ if raw.is_empty() => "is empty",
        Ok(_) => "is out of range",
        Err(_) if is_integer_text(raw) => "is out of range",
        Err(_) if raw.parse::<f64>().is_ok() => "is not an integer",
        Err(_) => "is not a number",
    };
    Err(ApiError::bad_request(format!(
        "{field}={} {problem}; expected an integer from {} to {}{note}",
        shown(raw),
        range.start(),
        range.end()
    )))
}

/// Whether `raw` is an optionally signed run of decimal digits, however long.
fn is_integer_text(raw: &str) -> bool {
    let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Parse the boolean `field=raw` of a query string: `true` or `false`.
pub fn boolean(field: &str, raw: &str) -> Result<bool, ApiError> {
    match raw {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{field}={} is not a boolean; expected true or false",
            shown(raw)
        ))),
    }
}

/// Parse the UUID `field=raw` of a query string; `what` says what it identifies.
pub fn uuid(field: &str, raw: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw.trim()).map_err(|_| {
        ApiError::bad_request(format!(
            "{field}={} is not {what}; expected a UUID like {EXAMPLE_UUID}",
            shown(raw)
        ))
    })
}

/// The task id of a path (`/tasks/{id}`).
pub fn path_task_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    crate::task::parse_task_id(raw).map_err(|_| {
        ApiError::bad_request(format!(
            "the task id {} in the path is not a UUID; expected a UUID like {EXAMPLE_UUID}",
            shown(raw)
        ))
    })
}

const EXAMPLE_UUID: &str = "1f0c3d6e-8a4b-4e0f-9a7c-2b5d8e1f4a6c";

/// 404 for paths no route serves, in the JSON shape.
pub async fn no_route(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::not_found(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.path()
    )))
}

/// A resource at `path` that answers 405 in the JSON shape for methods it has no route for.
pub fn endpoint(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// 405 for a known path with a method it does not serve.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.path()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<T: std::fmt::Debug>(r: Result<T, ApiError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        e.message
    }

    #[test]
    fn integers_are_checked_against_their_range_and_named() {
        assert_eq!(integer("limit", "5000", 1..=5000usize, ""), Ok(5000));
        assert_eq!(
            integer("since", "18446744073709551615", 0..=u64::MAX, ""),
            Ok(u64::MAX)
        );
        for (raw, problem) in [
            ("abc", "limit=abc is not a number"),
            ("", "limit= is empty"),
            ("0", "limit=0 is out of range"),
            ("5001", "limit=5001 is out of range"),
            ("-1", "limit=-1 is out of range"),
            ("+-1", "limit=+-1 is not a number"),
            ("99999999999999999999999999", "is out of range"),
            ("1e99", "limit=1e99 is not an integer"),
            ("1.5", "limit=1.5 is not an integer"),
            ("NaN", "limit=NaN is not an integer"),
            (" 5", "limit= 5 is not a number"),
        ] {
            let m = message(integer("limit", raw, 1..=5000usize, " (note)"));
            assert!(m.contains(problem), "{raw:?}: {m}");
            assert!(
                m.ends_with("; expected an integer from 1 to 5000 (note)"),
                "{m}"
            );
        }
        let m = message(integer("attempt", "99999999999", 1..=u32::MAX, ""));
        assert_eq!(
            m,
            "attempt=99999999999 is out of range; expected an integer from 1 to 4294967295"
        );
    }

    #[test]
    fn booleans_and_uuids_are_named() {
        assert_eq!(boolean("follow", "true"), Ok(true));
        assert_eq!(boolean("follow", "false"), Ok(false));
        let m = message(boolean("follow", "maybe"));
        assert_eq!(m, "follow=maybe is not a boolean; expected true or false");
        let m = message(uuid("after", "xyz", "a task id"));
        assert!(
            m.starts_with("after=xyz is not a task id; expected a UUID"),
            "{m}"
        );
        let m = message(path_task_id("1234"));
        assert!(m.contains("task id 1234 in the path"), "{m}");
    }

    #[test]
    fn values_are_repeated_short_and_escaped() {
        assert_eq!(shown("abc"), "abc");
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = shown(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), SHOWN_CHARS + 1);
        assert!(long.ends_with('…'));
        // Cut on a character, never inside one.
        assert_eq!(shown(&"é".repeat(100)).chars().count(), SHOWN_CHARS + 1);
    }
}
