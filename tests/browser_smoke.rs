//! The browser client of `common::browser` against a real headless Chromium and a tiny site
//! served from this test under a strict Content-Security-Policy: a module script runs, typing
//! and clicking reach it, an inline script is refused and reported, and an incognito page keeps
//! its cookies to itself. Skipped, loudly, where no Chromium is installed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use common::PATIENCE;
use common::browser::Browser;
use serde_json::json;

/// The policy the dashboard will serve: scripts only from the page's own origin, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'";

const INDEX: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script type="module" src="/app.js"></script></head>
<body>
<input id="name"> <select id="size"><option>small</option><option>large</option></select>
<button id="greet">Greet</button>
<div id="out">not yet</div>
</body></html>"#;

const APP: &str = r#"const out = document.getElementById('out');
const name = document.getElementById('name');
let inputs = 0;
name.addEventListener('input', () => { inputs += 1; });
document.body.addEventListener('change', (e) => { document.body.dataset.changed = e.target.id; });
document.getElementById('greet').addEventListener('click', () => {
  out.textContent = `hello, ${name.value} (${inputs} input event)`;
});
out.textContent = 'ready';
"#;

const INLINE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>inline</title></head>
<body><script>window.ran = true;</script></body></html>"#;

/// Where screenshots and Chromium's log go; kept after the run for a look.
fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser_smoke")
}

/// Serve the site on a free loopback port, one thread per connection, until the test binary
/// ends; returns `http://127.0.0.1:port`.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || answer(stream));
        }
    });
    base
}

/// Read one request head and answer it; the connection closes after each response.
fn answer(mut stream: TcpStream) {
    // Chromium opens spare connections it may never use; don't hold a thread forever for them.
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut lines = BufReader::new(reader).lines();
    let Some(Ok(request)) = lines.next() else {
        return;
    };
    for line in lines.by_ref() {
        match line {
            Ok(line) if !line.is_empty() => {}
            _ => break,
        }
    }
    let path = request.split(' ').nth(1).unwrap_or("/");
    let csp = format!("Content-Security-Policy: {CSP}\r\n");
    let (status, mime, extra, body) = match path {
        "/" => ("200 OK", "text/html", csp, INDEX),
        "/app.js" => ("200 OK", "text/javascript", String::new(), APP),
        "/inline" => ("200 OK", "text/html", csp, INLINE),
        "/login" => (
            "200 OK",
            "text/html",
            format!("{csp}Set-Cookie: sid=s3cret; HttpOnly; SameSite=Strict; Path=/\r\n"),
            "<!doctype html><title>in</title>",
        ),
        _ => ("404 Not Found", "text/plain", String::new(), "not found"),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {mime}; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

#[test]
fn a_module_page_answers_typing_and_clicks_without_errors() {
    let Some(browser) = Browser::launch(&out_dir()) else {
        return;
    };
    let base = serve();
    let page = browser.new_page();
    page.goto(&format!("{base}/"));
    page.wait_for(
        "the module script",
        "document.querySelector('#out')?.textContent === 'ready'",
        PATIENCE,
    );

    page.fill("#name", "Ada");
    page.fill("#size", "large");
    assert_eq!(page.eval("document.body.dataset.changed"), json!("size"));
    page.click("#greet");
    page.wait_for(
        "the greeting",
        "document.querySelector('#out').textContent.startsWith('hello')",
        PATIENCE,
    );
    assert_eq!(page.text("#out"), "hello, Ada (1 input event)");

    page.emulate_dark(true);
    assert_eq!(
        page.eval("matchMedia('(prefers-color-scheme: dark)').matches"),
        json!(true)
    );
    page.viewport(390, 844, true);
    assert_eq!(page.eval("innerWidth"), json!(390));
    let shot = out_dir().join("module-page.png");
    page.screenshot(&shot);
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {shot:?}");

    assert_eq!(page.errors(), Vec::<String>::new());
    let transferred = page.transferred();
    let app = transferred
        .iter()
        .find(|t| t.url.ends_with("/app.js"))
        .unwrap_or_else(|| panic!("app.js was not loaded: {transferred:?}"));
    assert!(app.bytes > APP.len() as u64, "{app:?}");
    assert_eq!(app.mime, "text/javascript");
    let total: u64 = transferred.iter().map(|t| t.bytes).sum();
    assert!(total > (INDEX.len() + APP.len()) as u64, "{transferred:?}");
}

#[test]
fn an_inline_script_under_the_csp_is_reported_and_a_failed_wait_leaves_a_screenshot() {
    let Some(browser) = Browser::launch(&out_dir()) else {
        return;
    };
    let base = serve();
    let page = browser.new_page();
    page.goto(&format!("{base}/inline"));
    assert_eq!(
        page.eval("window.ran ?? null"),
        json!(null),
        "the CSP let it run"
    );
    let errors = page.take_errors();
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "the refused inline script is not among the errors: {errors:?}"
    );
    assert_eq!(page.errors(), Vec::<String>::new(), "take_errors kept them");

    let shot = out_dir().join("timeout-never-true.png");
    let _ = std::fs::remove_file(&shot);
    let failed = catch_unwind(AssertUnwindSafe(|| {
        page.wait_for("never true", "1 + 1 === 3", Duration::from_millis(200))
    }));
    let message = match failed {
        Ok(value) => panic!("a false condition was met: {value}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(
        message.contains("never true") && message.contains("1 + 1 === 3"),
        "{message}"
    );
    assert!(shot.exists(), "no screenshot at {shot:?}: {message}");
}

#[test]
fn an_incognito_page_does_not_share_the_login_cookie() {
    let Some(browser) = Browser::launch(&out_dir()) else {
        return;
    };
    let base = serve();
    let first = browser.new_page();
    first.goto(&format!("{base}/login"));
    let cookies = first.cookies();
    assert_eq!(cookies[0]["name"], "sid", "{cookies}");
    assert_eq!(cookies[0]["httpOnly"], true, "{cookies}");
    assert_eq!(cookies[0]["sameSite"], "Strict", "{cookies}");

    let second = browser.new_page();
    second.goto(&format!("{base}/"));
    assert_eq!(second.cookies()[0]["name"], "sid", "tabs share one context");

    let incognito = browser.new_incognito_page();
    incognito.goto(&format!("{base}/"));
    assert_eq!(incognito.cookies(), json!([]));
    for page in [&first, &second, &incognito] {
        assert_eq!(page.errors(), Vec::<String>::new());
    }
}
