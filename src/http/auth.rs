//! Bearer tokens on both APIs.
//!
//! The manager accepts the tokens of its `--token-file` (each with a role) and `CUBE_TOKEN` (a
//! write token); a worker accepts the cluster token (`--cluster-token`, `CUBE_CLUSTER_TOKEN`)
//! that its manager presents. A `read` token may GET; a `write` token may do anything. A request
//! without a valid `Authorization: Bearer …` is 401, a read token writing is 403, both in the
//! JSON error shape. `/health`, `/openapi.json` and the dashboard's page (`/`, `/ui/…`) stay
//! open. On the manager, a dashboard session's cookie stands for the token it was made from,
//! with its CSRF header on writes ([`super::session`]).
//!
//! With no token configured the API is open, and an `Authorization` header is ignored; serving
//! it beyond loopback that way needs `--insecure` ([`check_exposure`]).
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time, every configured
//! token every time, so neither the comparison's time nor a memory dump gives one away. No
//! token is ever logged.

use std::path::Path;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{Error, web};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use super::session::{self, Sessions};

/// Paths anyone may read: liveness probes, the API's description and the dashboard's page,
/// whose own requests then authenticate (see [`is_open`]).
pub const OPEN_PATHS: &[&str] = &["/health", "/openapi.json", "/"];

/// Whether `path` is served without a token: [`OPEN_PATHS`] and the dashboard's assets and
/// sign-in under `/ui/`.
pub fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || path.starts_with("/ui/")
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GET and HEAD only.
    Read,
    /// Everything.
    Write,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s.to_ascii_lowercase().as_str() {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            other => Err(format!("{other:?} is not a role; expected read or write")),
        }
    }
}

/// The tokens an API accepts. Empty: the API is open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Role)>,
}

/// A token file in TOML: `[[token]]` tables with `token` and `role`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    role: Role,
}

/// Shortest token accepted: a guessable one is worse than none, since it looks safe.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Accept `token` with `role`.
    pub fn add(&mut self, token: &str, role: Role) -> Result<(), String> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "a token must be at least {MIN_TOKEN_LEN} characters with no white space"
            ));
        }
        self.entries.push((digest(token), role));
        Ok(())
    }

    /// Read a token file: TOML (`[[token]]` with `token` and `role`), or one token a line as
    /// `ROLE TOKEN` (`#` starts a comment).
    pub fn from_file(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let mut tokens = Tokens::default();
        let at = |line: Option<usize>, e: String| match line {
            Some(n) => format!("{}:{n}: {e}", path.display()),
            None => format!("{}: {e}", path.display()),
        };
        if text.contains("[[token]]") {
            let file: TokenFile = toml::from_str(&text).map_err(|e| at(None, e.to_string()))?;
            for entry in file.token {
                tokens
                    .add(&entry.token, entry.role)
                    .map_err(|e| at(None, e))?;
            }
        } else {
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let (role, token) = line.split_once(char::is_whitespace).ok_or_else(|| {
                    at(
                        Some(n + 1),
                        "expected ROLE TOKEN, e.g. \"write 3f9c…\"".to_string(),
                    )
                })?;
                let role = role.parse().map_err(|e| at(Some(n + 1), e))?;
                tokens.add(token, role).map_err(|e| at(Some(n + 1), e))?;
            }
        }
        if tokens.is_empty() {
            return Err(at(None, "holds no token".to_string()));
        }
        Ok(tokens)
    }

    /// The role of a presented token, comparing it with every configured one in constant time.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let presented = digest(presented);
        let mut found = None;
        for (known, role) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token: 64 hex digits from the operating system's random source (two v4
/// UUIDs, 244 random bits).
pub fn generate() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Whether serving an API on `host` this way is allowed: beyond loopback only with tokens, or
/// when `insecure` says the operator means it.
pub fn check_exposure(
    what: &str,
    host: &str,
    tokens: &Tokens,
    insecure: bool,
) -> Result<(), String> {
    let loopback = host
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(host == "localhost");
    match (loopback, tokens.is_empty(), insecure) {
        (true, _, _) | (false, false, _) => Ok(()),
        (false, true, true) => {
            log::warn!(
                "the {what} API binds {host}, reachable from other machines, without authentication (--insecure): anyone who can reach it can run containers"
            );
            Ok(())
        }
        (false, true, false) => Err(format!(
            "refusing to serve the {what} API on {host} without tokens: anyone who could reach it could run containers; give {}, or --insecure to serve it open anyway",
            if what == "manager" {
                "--token-file or CUBE_TOKEN"
            } else {
                "--cluster-token or CUBE_CLUSTER_TOKEN"
            }
        )),
    }
}

/// What an API's requests are checked against, as app data.
#[derive(Debug, Clone, Default)]
pub struct Access(pub Arc<Tokens>);

/// The middleware: let a request through, or answer 401/403 in the JSON shape.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, Error> {
    let tokens = req
        .app_data::<web::Data<Access>>()
        .map(|a| a.0.clone())
        .unwrap_or_default();
    if tokens.is_empty() || is_open(req.path()) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let refusal = match role_of_request(&req, &tokens) {
        Err(refusal) => Some(refusal),
        Ok(Role::Read) if !is_read(req.method()) => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a read token may only GET; {} {} needs a write token",
                req.method(),
                req.path()
            ),
        )),
        Ok(_) => None,
    };
    match refusal {
        Some(err) => {
            let mut response = actix_web::ResponseError::error_response(&err);
            if response.status() == StatusCode::UNAUTHORIZED {
                // RFC 6750: say which scheme would be accepted.
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            Ok(req.into_response(response))
        }
        None => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// The role a request authenticates with: its bearer token's, or else (on the manager) its
/// dashboard session's, which counts only with the session's key in its header.
fn role_of_request(req: &ServiceRequest, tokens: &Tokens) -> Result<Role, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if let Some(token) = bearer {
        return tokens.role_of(token).ok_or_else(|| {
            unauthorized("the token is not valid here: expected one of this API's tokens")
        });
    }
    let sessions = req.app_data::<web::Data<Sessions>>();
    let (Some(sessions), Some(cookie)) = (sessions, req.cookie(session::COOKIE)) else {
        return Err(unauthorized(
            "no token: expected an Authorization: Bearer <token> header",
        ));
    };
    session::authenticate(
        sessions,
        cookie.value(),
        req.headers().get(session::CSRF_HEADER),
        std::time::Instant::now(),
    )
    .map(|s| s.role)
    .map_err(|why| unauthorized(&format!("{} {}: {why}", req.method(), req.path())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "write-token-0123456789";
    const R: &str = "read-token-0123456789";

    #[test]
    fn tokens_are_found_by_role_and_nothing_else_is() {
        let mut t = Tokens::default();
        t.add(W, Role::Write).unwrap();
        t.add(R, Role::Read).unwrap();
        assert_eq!(t.role_of(W), Some(Role::Write));
        assert_eq!(t.role_of(R), Some(Role::Read));
        assert_eq!(t.role_of("write-token-012345678"), None);
        assert_eq!(t.role_of(""), None);
        assert!(t.add("short", Role::Read).is_err());
    }

    #[test]
    fn token_files_are_toml_or_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let lines = dir.path().join("tokens");
        std::fs::write(
            &lines,
            format!("# ops\nwrite {W}\n\nread {R}  # dashboards\n"),
        )
        .unwrap();
        let t = Tokens::from_file(&lines).unwrap();
        assert_eq!((t.len(), t.role_of(R)), (2, Some(Role::Read)));
        let toml = dir.path().join("tokens.toml");
        std::fs::write(
            &toml,
            format!("[[token]]\ntoken = \"{W}\"\nrole = \"write\"\n"),
        )
        .unwrap();
        assert_eq!(
            Tokens::from_file(&toml).unwrap().role_of(W),
            Some(Role::Write)
        );
        std::fs::write(&lines, format!("admin {W}\n")).unwrap();
        let err = Tokens::from_file(&lines).unwrap_err();
        assert!(
            err.contains(":1:") && err.contains("read or write"),
            "{err}"
        );
        std::fs::write(&lines, "# nothing\n").unwrap();
        assert!(
            Tokens::from_file(&lines)
                .unwrap_err()
                .contains("holds no token")
        );
    }

    #[test]
    fn beyond_loopback_an_api_needs_tokens_or_insecure() {
        let none = Tokens::default();
        let mut some = Tokens::default();
        some.add(W, Role::Write).unwrap();
        assert!(check_exposure("manager", "127.0.0.1", &none, false).is_ok());
        assert!(check_exposure("manager", "::1", &none, false).is_ok());
        let err = check_exposure("manager", "0.0.0.0", &none, false).unwrap_err();
        assert!(err.contains("--insecure"), "{err}");
        assert!(check_exposure("worker", "0.0.0.0", &some, false).is_ok());
        assert!(check_exposure("worker", "0.0.0.0", &none, true).is_ok());
    }

    #[test]
    fn generated_tokens_are_long_and_different() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
