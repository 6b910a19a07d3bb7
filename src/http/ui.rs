//! The dashboard: its page and assets, embedded in the binary, and its sign-in.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page (`ui/index.html`), naming its assets under `/ui/<version>/` |
//! | `GET /ui/<version>/<file>` | an asset: immutable for a year under this build's version |
//! | `GET /ui/session` | `{auth, role, csrf: null}`: whether tokens are on, and the role of this page's session (its cookie and key), if any |
//! | `POST /ui/login` | `{token}` → a session cookie and `{auth, role, csrf}`, the session's key; 401 for a bad token |
//! | `POST /ui/logout` | ends the session (given its key) and clears the cookie: 204 |
//!
//! The assets are plain HTML, CSS and ES modules from `ui/`, with no build step. Their version
//! is a digest of their bytes, so a new build's page never runs an old build's scripts from a
//! cache, and a browser never asks twice for what it holds. Each is gzipped once, when first
//! asked for, and sent gzipped to whoever accepts it. Every answer carries a strict
//! Content-Security-Policy: scripts, styles and connections from this origin only, no inline
//! code, no frames.
//!
//! These routes are the dashboard's own, not part of the API's OpenAPI document.

use std::io::Write;
use std::sync::LazyLock;
use std::time::Instant;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::auth::{Access, Role};
use super::session::{self, Sessions};
use super::{ApiError, endpoint, read_body_up_to};

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Largest body `POST /ui/login` reads.
const MAX_LOGIN_BODY: usize = 4096;

/// The files of `ui/`: name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/dom.js"),
    ),
    (
        "store.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/store.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/views.js"),
    ),
    (
        "forms.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/forms.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../ui/icon.svg"),
    ),
];

/// The page, with `{{v}}` where the assets' version goes.
const INDEX: &str = include_str!("../../ui/index.html");

/// One file as served.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    /// Shared, so an answer costs a reference count, not a copy.
    plain: Bytes,
    gzipped: Bytes,
    etag: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, plain: Vec<u8>) -> Asset {
        let digest = Sha256::digest(&plain);
        let etag = hex(&digest[..12]);
        let gzipped = gzip(&plain);
        Asset {
            name,
            content_type,
            plain: Bytes::from(plain),
            gzipped: Bytes::from(gzipped),
            etag,
        }
    }
}

struct Assets {
    /// A digest of every file: the path segment the page names them under.
    version: String,
    index: Asset,
    files: Vec<Asset>,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let mut all = Sha256::new();
    for (name, _, bytes) in FILES {
        all.update(name.as_bytes());
        all.update(bytes);
    }
    all.update(INDEX.as_bytes());
    let version = hex(&all.finalize()[..6]);
    let index = INDEX.replace("{{v}}", &version).into_bytes();
    Assets {
        index: Asset::new("index.html", "text/html; charset=utf-8", index),
        files: FILES
            .iter()
            .map(|(name, kind, bytes)| Asset::new(name, kind, bytes.to_vec()))
            .collect(),
        version,
    }
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// The version the page names its assets under (a digest of them).
pub fn version() -> &'static str {
    &ASSETS.version
}

/// Mount the dashboard on the manager's app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/").route(web::get().to(index)))
        .service(endpoint("/ui/session").route(web::get().to(current_session)))
        .service(endpoint("/ui/login").route(web::post().to(login)))
        .service(endpoint("/ui/logout").route(web::post().to(logout)))
        .service(endpoint("/ui/{version}/{file}").route(web::get().to(asset)));
}

/// The headers every dashboard answer carries.
fn hardened(mut builder: HttpResponseBuilder) -> HttpResponseBuilder {
    builder
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header(("Cross-Origin-Opener-Policy", "same-origin"))
        .insert_header(("Cross-Origin-Resource-Policy", "same-origin"));
    builder
}

/// `asset` as the request accepts it: 304 when it holds this one, gzipped when it may be.
fn serve(req: &HttpRequest, asset: &Asset, cache_control: &str) -> HttpResponse {
    let gzip_ok = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip)
        && asset.gzipped.len() < asset.plain.len();
    // Each encoding is its own representation, with its own tag.
    let etag = if gzip_ok {
        format!("\"{}-gz\"", asset.etag)
    } else {
        format!("\"{}\"", asset.etag)
    };
    let held = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches_etag(v, &etag));
    let mut builder = hardened(HttpResponse::build(if held {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    }));
    builder
        .insert_header((header::CACHE_CONTROL, cache_control))
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::VARY, "Accept-Encoding"));
    if held {
        return builder.finish();
    }
    builder.content_type(asset.content_type);
    if gzip_ok {
        builder
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(asset.gzipped.clone())
    } else {
        builder.body(asset.plain.clone())
    }
}

/// Whether an `If-None-Match` value names `etag`: `*`, or the same tag, weak or strong (the
/// weak comparison RFC 9110 asks of `If-None-Match`).
fn matches_etag(value: &str, etag: &str) -> bool {
    value.trim() == "*"
        || value
            .split(',')
            .any(|tag| tag.trim().trim_start_matches("W/") == etag)
}

/// Whether an `Accept-Encoding` value takes gzip (and does not refuse it with `q=0`).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|part| {
        let mut fields = part.split(';').map(str::trim);
        let coding = fields.next().unwrap_or("");
        let refused = fields.any(|f| {
            f.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

async fn index(req: HttpRequest) -> HttpResponse {
    // Always revalidated: it names the assets of the build that serves it.
    serve(&req, &ASSETS.index, "no-cache")
}

async fn asset(
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (version, file) = path.into_inner();
    let Some(asset) = ASSETS.files.iter().find(|a| a.name == file) else {
        return Err(ApiError::not_found(format!(
            "the dashboard has no file {}; expected one of {}",
            super::shown(&file),
            ASSETS
                .files
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    Ok(if version == ASSETS.version {
        serve(&req, asset, "public, max-age=31536000, immutable")
    } else {
        // A page of another build: serve what this one has, but let nothing keep it.
        serve(&req, asset, "no-cache")
    })
}

/// What the page learns about its standing: whether tokens are on, its session's role, and
/// (from the sign-in only) the session's key.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct SessionView {
    /// Whether the API asks for tokens; without them everyone may do anything.
    pub auth: bool,
    /// `read` or `write`; null before signing in.
    pub role: Option<Role>,
    /// The session's key, which every request made with its cookie carries in the
    /// `X-Cube-CSRF` header. Given by the sign-in only: nothing hands it out again, so a stolen
    /// cookie is not a session.
    pub csrf: Option<String>,
}

fn tokens_on(req: &HttpRequest) -> bool {
    req.app_data::<web::Data<Access>>()
        .is_some_and(|a| !a.0.is_empty())
}

async fn current_session(req: HttpRequest, sessions: web::Data<Sessions>) -> HttpResponse {
    let view = if !tokens_on(&req) {
        SessionView {
            auth: false,
            role: Some(Role::Write),
            csrf: None,
        }
    } else {
        let session = req.cookie(session::COOKIE).and_then(|c| {
            session::authenticate(
                &sessions,
                c.value(),
                req.headers().get(session::CSRF_HEADER),
                Instant::now(),
            )
            .ok()
        });
        SessionView {
            auth: true,
            role: session.map(|s| s.role),
            csrf: None,
        }
    };
    hardened(HttpResponse::Ok())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(view)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

async fn login(
    req: HttpRequest,
    payload: web::Payload,
    access: web::Data<Access>,
    sessions: web::Data<Sessions>,
) -> Result<HttpResponse, ApiError> {
    // JSON only: a form posted from another site cannot sign a browser in to its own session.
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json with {\"token\": \"…\"}",
        ));
    }
    let body = read_body_up_to(&req, payload, MAX_LOGIN_BODY, "{\"token\": \"…\"}").await?;
    let login: Login = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not {{\"token\": \"…\"}}: {e}; expected one field, token, a string"
        ))
    })?;
    if access.0.is_empty() {
        return Ok(hardened(HttpResponse::Ok()).json(SessionView {
            auth: false,
            role: Some(Role::Write),
            csrf: None,
        }));
    }
    // Tokens are long and random (at least 16 characters; 64 hex digits from cube up): a guess
    // here is no better than a guess in any request's Authorization header.
    let Some(role) = access.0.role_of(login.token.trim()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "that token is not one of this manager's: expected a token from its --token-file or CUBE_TOKEN (cube up prints where it wrote one)",
        ));
    };
    let (id, session) = sessions.open(role, Instant::now()).ok_or_else(|| {
        ApiError::unavailable(format!(
            "the manager holds {} dashboard sessions, all of a greater role than this token's; try again once some end (they last 12 hours), or use the token with the API directly",
            session::MAX_SESSIONS
        ))
    })?;
    log::info!(
        "dashboard: a {} session began ({} live)",
        match role {
            Role::Read => "read",
            Role::Write => "write",
        },
        sessions.len()
    );
    Ok(hardened(HttpResponse::Ok())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(session_cookie(id, sessions.secure, false))
        .json(SessionView {
            auth: true,
            role: Some(session.role),
            csrf: Some(session.csrf),
        }))
}

async fn logout(req: HttpRequest, sessions: web::Data<Sessions>) -> HttpResponse {
    // The session ends only when the page that holds its key asks; anyone may drop the cookie.
    if let Some(cookie) = req.cookie(session::COOKIE)
        && session::authenticate(
            &sessions,
            cookie.value(),
            req.headers().get(session::CSRF_HEADER),
            Instant::now(),
        )
        .is_ok()
    {
        sessions.close(cookie.value());
    }
    hardened(HttpResponse::NoContent())
        .cookie(session_cookie(String::new(), sessions.secure, true))
        .finish()
}

/// The session cookie: `HttpOnly; SameSite=Strict; Path=/`, `Secure` over TLS; `clear` makes
/// one that removes it.
fn session_cookie(id: String, secure: bool, clear: bool) -> Cookie<'static> {
    let mut cookie = Cookie::build(session::COOKIE, id)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish();
    if clear {
        cookie.make_removal();
    } else {
        cookie.set_max_age(actix_web::cookie::time::Duration::seconds(
            session::SESSION_TTL.as_secs() as i64,
        ));
    }
    cookie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_takes_a_star() {
        assert!(matches_etag("\"abc\"", "\"abc\""));
        assert!(matches_etag("W/\"abc\"", "\"abc\""));
        assert!(matches_etag("\"x\", W/\"abc\"", "\"abc\""));
        assert!(matches_etag("*", "\"abc\""));
        assert!(!matches_etag("\"abc-gz\"", "\"abc\""));
        assert!(!matches_etag("", "\"abc\""));
    }

    #[test]
    fn gzip_is_taken_unless_refused() {
        assert!(accepts_gzip("gzip, deflate, br"));
        assert!(accepts_gzip("br;q=1.0, GZIP;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("br, deflate"));
        assert!(!accepts_gzip(""));
    }

    #[test]
    fn the_page_names_its_assets_under_their_version() {
        let page = String::from_utf8_lossy(&ASSETS.index.plain).into_owned();
        assert!(!page.contains("{{v}}"));
        assert!(page.contains(&format!("/ui/{}/app.js", version())));
        for name in ["app.js", "style.css", "icon.svg"] {
            assert!(
                page.contains(&format!("/ui/{}/{name}", version())),
                "{name}"
            );
        }
        for asset in &ASSETS.files {
            assert!(!asset.plain.is_empty(), "{}", asset.name);
            assert!(asset.gzipped.starts_with(&[0x1f, 0x8b]), "{}", asset.name);
        }
    }

    #[test]
    fn every_module_the_scripts_import_is_served() {
        for asset in ASSETS.files.iter().filter(|a| a.name.ends_with(".js")) {
            let text = String::from_utf8_lossy(&asset.plain);
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(from) = line.split("from \"./").nth(1) else {
                    panic!(
                        "{}: imports must be relative, \"./x.js\": {line}",
                        asset.name
                    );
                };
                let file = from.split('"').next().unwrap_or("");
                assert!(
                    ASSETS.files.iter().any(|a| a.name == file),
                    "{} imports {file}, which is not served",
                    asset.name
                );
            }
        }
    }
}
