//! The dashboard's HTTP side, with a real manager: its page and assets (content types,
//! caching, gzip, the Content-Security-Policy), and its sign-in (the session cookie's flags,
//! CSRF on writes, read-only sessions, sign-out). The browser itself is `tests/dashboard.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{CubeProcess, manager_process};
use serde_json::{Value, json};

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";

fn manager_with_tokens(dir: &Path) -> CubeProcess {
    let file = dir.join("tokens");
    std::fs::write(&file, format!("read {READ}\nwrite {WRITE}\n")).expect("write the token file");
    manager_process(
        dir,
        "manager",
        &["--token-file", file.to_str().expect("utf-8")],
    )
}

/// An answer with every header, as a browser would see it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(body.unwrap_or("").as_bytes().to_vec())
        .expect("a request");
    let mut res = agent().run(req).expect("the manager answers");
    let headers = res
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let status = res.status().as_u16();
    let body = res
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

/// Sign in with `token`: the session cookie (`name=value`) and the CSRF token.
fn login(base: &str, token: &str) -> (String, String, Answer) {
    let answer = send(
        "POST",
        &format!("{base}/ui/login"),
        &[("Content-Type", "application/json")],
        Some(&json!({ "token": token }).to_string()),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let set_cookie = answer.header("set-cookie").expect("a cookie").to_string();
    let cookie = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    let csrf = answer.json()["csrf"]
        .as_str()
        .expect("a CSRF token")
        .to_string();
    (cookie, csrf, answer)
}

#[test]
fn the_page_and_its_assets_are_served_open_cached_and_locked_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = manager_with_tokens(dir.path());
    let base = manager.url();

    // The page is open (it asks for the token itself), revalidated every time.
    let page = send("GET", &format!("{base}/"), &[], None);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let csp = page.header("content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = String::from_utf8_lossy(&page.body).into_owned();
    assert!(!html.contains("<script>"), "no inline script: {html}");

    // It names its assets under a version; each is immutable there, with its content type.
    let app = html
        .split('"')
        .find(|part| part.starts_with("/ui/") && part.ends_with("/app.js"))
        .expect("the page names app.js")
        .to_string();
    let version_dir = app.trim_end_matches("app.js").to_string();
    for (file, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("views.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let url = format!("{base}{version_dir}{file}");
        let plain = send("GET", &url, &[], None);
        assert_eq!(plain.status, 200, "{file}");
        assert_eq!(plain.header("content-type"), Some(kind), "{file}");
        assert_eq!(
            plain.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{file}"
        );
        assert_eq!(plain.header("content-encoding"), None, "{file}");
        // A browser that holds it gets 304; one that takes gzip gets it smaller.
        let etag = plain.header("etag").expect("an ETag").to_string();
        let held = send("GET", &url, &[("If-None-Match", &etag)], None);
        assert_eq!(held.status, 304, "{file}");
        assert!(held.body.is_empty(), "{file}");
        let gzipped = send("GET", &url, &[("Accept-Encoding", "gzip, br")], None);
        if plain.body.len() > 1000 {
            assert_eq!(gzipped.header("content-encoding"), Some("gzip"), "{file}");
            assert!(gzipped.body.len() < plain.body.len(), "{file}");
            assert_eq!(&gzipped.body[..2], &[0x1f, 0x8b], "{file}");
        }
    }
    // Another build's version: still served, but not kept.
    let stale = send("GET", &format!("{base}/ui/000000000000/app.js"), &[], None);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("cache-control"), Some("no-cache"));
    let missing = send("GET", &format!("{base}{version_dir}nope.js"), &[], None);
    assert_eq!(missing.status, 404);
    assert!(missing.error().contains("app.js"), "{}", missing.error());

    // Only the page is open: the API behind it is not.
    assert_eq!(send("GET", &format!("{base}/tasks"), &[], None).status, 401);
    let session = send("GET", &format!("{base}/ui/session"), &[], None);
    assert_eq!(session.status, 200);
    assert_eq!(
        session.json(),
        json!({"auth": true, "role": null, "csrf": null})
    );
}

#[test]
fn a_session_stands_for_its_token_and_writes_need_its_csrf_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = manager_with_tokens(dir.path());
    let base = manager.url();
    let url = |p: &str| format!("{base}{p}");
    let task = json!({"image": "cube-sim/task", "cmd": ["sleep", "60"]}).to_string();

    // Refusals say what was wrong.
    let wrong = send(
        "POST",
        &url("/ui/login"),
        &[("Content-Type", "application/json")],
        Some(r#"{"token": "not-a-token-of-this-manager"}"#),
    );
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.error().contains("not one of this manager's"),
        "{}",
        wrong.error()
    );
    assert_eq!(wrong.header("set-cookie"), None);
    let form = send(
        "POST",
        &url("/ui/login"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&format!("token={WRITE}")),
    );
    assert_eq!(
        form.status, 415,
        "a cross-site form cannot sign a browser in"
    );
    let shape = send(
        "POST",
        &url("/ui/login"),
        &[("Content-Type", "application/json")],
        Some(r#"{"tok": 1}"#),
    );
    assert_eq!(shape.status, 400);
    assert!(shape.error().contains("token"), "{}", shape.error());

    // A write token's session: the cookie is HttpOnly, SameSite=Strict, for the whole site.
    let (cookie, csrf, answer) = login(&base, WRITE);
    let set_cookie = answer.header("set-cookie").expect("a cookie");
    assert!(cookie.starts_with("cube_session="), "{set_cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(flag), "{set_cookie} lacks {flag}");
    }
    assert!(!set_cookie.contains(WRITE), "the token is not the cookie");
    assert_eq!(answer.json()["role"], "write");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let key = ("X-Cube-CSRF", csrf.as_str());
    // The session's key is given once: the session's own endpoint never hands it out again,
    // and knows the session only with it.
    let bare = send("GET", &url("/ui/session"), &[("Cookie", &cookie)], None);
    assert_eq!(
        bare.json(),
        json!({"auth": true, "role": null, "csrf": null})
    );
    let session = send(
        "GET",
        &url("/ui/session"),
        &[("Cookie", &cookie), key],
        None,
    );
    assert_eq!(
        session.json(),
        json!({"auth": true, "role": "write", "csrf": null})
    );

    // The cookie alone is nothing (a container's web server on another port of this host
    // receives it too): reads and writes need the key, compared exactly.
    let json_type = ("Content-Type", "application/json");
    for (method, body) in [("GET", None), ("POST", Some(task.as_str()))] {
        let bare = send(
            method,
            &url("/tasks"),
            &[("Cookie", &cookie), json_type],
            body,
        );
        assert_eq!(bare.status, 401, "{method}");
        assert!(bare.error().contains("X-Cube-CSRF"), "{}", bare.error());
        let wrong = send(
            method,
            &url("/tasks"),
            &[
                ("Cookie", &cookie),
                json_type,
                ("X-Cube-CSRF", &csrf[..csrf.len() - 1]),
            ],
            body,
        );
        assert_eq!(wrong.status, 401, "{method}");
    }
    assert_eq!(
        send("GET", &url("/tasks"), &[("Cookie", &cookie), key], None).status,
        200
    );
    let created = send(
        "POST",
        &url("/tasks"),
        &[("Cookie", &cookie), json_type, key],
        Some(&task),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    // The key of one session is nothing to another.
    let (other_cookie, _, _) = login(&base, WRITE);
    let crossed = send(
        "POST",
        &url("/tasks"),
        &[("Cookie", &other_cookie), json_type, key],
        Some(&task),
    );
    assert_eq!(crossed.status, 401);

    // A read token's session reads, and is refused writes whatever it carries.
    let (reader, reader_csrf, answer) = login(&base, READ);
    assert_eq!(answer.json()["role"], "read");
    let reader_key = ("X-Cube-CSRF", reader_csrf.as_str());
    assert_eq!(
        send(
            "GET",
            &url("/nodes"),
            &[("Cookie", &reader), reader_key],
            None
        )
        .status,
        200
    );
    let refused = send(
        "POST",
        &url("/tasks"),
        &[("Cookie", &reader), json_type, reader_key],
        Some(&task),
    );
    assert_eq!(refused.status, 403);
    assert!(
        refused.error().contains("read token"),
        "{}",
        refused.error()
    );

    // A bearer token still works beside sessions, and a bad one is not rescued by a cookie.
    let bearer = format!("Bearer {WRITE}");
    assert_eq!(
        send("GET", &url("/tasks"), &[("Authorization", &bearer)], None).status,
        200
    );
    let bad_bearer = send(
        "GET",
        &url("/tasks"),
        &[
            ("Authorization", "Bearer nope-nope-nope-nope"),
            ("Cookie", &cookie),
        ],
        None,
    );
    assert_eq!(bad_bearer.status, 401);

    // Signing out without the key only drops the cookie; with it, the session ends on the
    // manager, not only in the browser.
    let out = send("POST", &url("/ui/logout"), &[("Cookie", &cookie)], None);
    assert_eq!(out.status, 204);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("cube_session=;") || c.contains("Max-Age=0"))
    );
    assert_eq!(
        send("GET", &url("/tasks"), &[("Cookie", &cookie), key], None).status,
        200,
        "a page without the key cannot sign another out"
    );
    let out = send(
        "POST",
        &url("/ui/logout"),
        &[("Cookie", &cookie), key],
        None,
    );
    assert_eq!(out.status, 204);
    let after = send("GET", &url("/tasks"), &[("Cookie", &cookie), key], None);
    assert_eq!(after.status, 401);
    assert!(after.error().contains("sign in again"), "{}", after.error());
    // Nothing of a token reached the log.
    let log = manager.log_text();
    for secret in [
        WRITE,
        READ,
        csrf.as_str(),
        cookie.trim_start_matches("cube_session="),
    ] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
}

#[test]
fn without_tokens_the_page_is_a_writer_and_needs_no_sign_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = manager_process(dir.path(), "manager", &[]);
    let session = send("GET", &format!("{}/ui/session", manager.url()), &[], None);
    assert_eq!(
        session.json(),
        json!({"auth": false, "role": "write", "csrf": null})
    );
}
