//! A small synchronous client of the Chrome DevTools Protocol, so integration tests can drive a
//! real headless Chromium: open pages, run JavaScript, click and type, take screenshots, and
//! collect what a person would see go wrong (console errors, uncaught exceptions, CSP
//! violations) and what the page cost on the wire.
//!
//! One websocket goes to the browser. A reader thread owns its read half: it hands each answer
//! to the caller waiting on that `id` and files each event under the page (`sessionId`) it
//! belongs to, in that page's [`PageEvents`]. Callers write on a clone of the socket. Every wait
//! is bounded; a helper that cannot do what a test asked panics and says why, at the test's line.
//!
//! The browser is `$CUBE_CHROMIUM`, else the first of `chromium`, `chromium-browser` and
//! `google-chrome` on `PATH`. Without one the test is skipped loudly, unless
//! `CUBE_REQUIRE_BROWSER=1`, which turns that into a failure (for CI, where it must run).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::PATIENCE;

/// How long one protocol call may take before it is reported as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Page::wait_for`] and the other waits look again.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long a closing browser gets to close its DevTools socket before its process group is
/// killed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The binaries looked for on `PATH`, in order, when `CUBE_CHROMIUM` is not set.
const BROWSER_NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];
/// What Chromium prints on stderr once its DevTools endpoint accepts connections.
const LISTENING: &str = "DevTools listening on ";

/// A headless Chromium with its own throw-away profile; killed, and its profile removed, when
/// dropped. Pages made from it stay usable only while it lives.
pub struct Browser {
    conn: Arc<Connection>,
    reader: Option<JoinHandle<()>>,
    out_dir: PathBuf,
    log: PathBuf,
    // Dropped in this order, after `Drop::drop`: the process before the profile it writes to.
    process: BrowserProcess,
    _profile: tempfile::TempDir,
}

/// One tab, attached with its own session. Closed when dropped.
pub struct Page {
    conn: Arc<Connection>,
    session: String,
    target: String,
    /// The browser context this page alone uses, disposed of with it.
    context: Option<String>,
    events: Arc<Mutex<PageEvents>>,
    out_dir: PathBuf,
}

/// One response body the page loaded: its URL, the bytes it took on the wire (headers
/// included, compressed as sent) and its MIME type.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub url: String,
    pub bytes: u64,
    pub mime: String,
}

impl Browser {
    /// Start a headless Chromium writing its log (and screenshots of failed waits) into
    /// `out_dir`, or `None`, after saying so on stderr, when there is no browser to start and
    /// `CUBE_REQUIRE_BROWSER=1` is not set.
    #[track_caller]
    pub fn launch(out_dir: &Path) -> Option<Browser> {
        let Some(binary) = find_browser() else {
            let looked = format!(
                "no Chromium found: $CUBE_CHROMIUM is unset and none of {BROWSER_NAMES:?} is on PATH \
                 (apt-get install chromium)"
            );
            if std::env::var("CUBE_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!("{looked}, and CUBE_REQUIRE_BROWSER=1 says the browser tests must run");
            }
            // Straight to stderr: `eprintln!` would be captured, and hidden, by a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED: this browser test did not run: {looked}. \
                 Set CUBE_REQUIRE_BROWSER=1 to make that a failure. !!!!!!!!\n"
            );
            return None;
        };
        if let Err(e) = std::fs::create_dir_all(out_dir) {
            panic!("cannot create the browser's output directory {out_dir:?}: {e}");
        }
        let profile = match tempfile::Builder::new().prefix("cube-chromium-").tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("cannot create a Chromium profile directory: {e}"),
        };

        let mut command = Command::new(&binary);
        command
            .args([
                "--headless=new",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // Nothing outside loopback is reachable here; don't let the browser try.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // No keyring over D-Bus, which may be absent or ask for a password.
                "--password-store=basic",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()));
        if running_as_root() {
            // Chromium refuses to start its sandbox as root, as in CI and containers.
            command.arg("--no-sandbox");
        }
        command
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that dropping it can kill the renderers and helpers too.
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => panic!("cannot start {binary:?}: {e}"),
        };
        let stderr = child.stderr.take();
        let mut process = BrowserProcess { child: Some(child) };
        let log = out_dir.join(format!("chromium-{}.log", process.id()));
        let endpoint = match stderr {
            Some(stderr) => read_endpoint(stderr, &log),
            None => Err("its stderr was not piped".to_string()),
        };
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(why) => {
                let status = process.stop();
                panic!(
                    "{binary:?} did not open its DevTools endpoint: {why}; it {status}; its stderr:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let (conn, reader) = match Connection::open(&endpoint) {
            Ok(pair) => pair,
            Err(e) => panic!("cannot connect to Chromium's DevTools at {endpoint}: {e}"),
        };
        Some(Browser {
            conn,
            reader: Some(reader),
            out_dir: out_dir.to_path_buf(),
            log,
            process,
            _profile: profile,
        })
    }

    /// A new tab in the browser's default context, which shares cookies and cache with every
    /// other such tab.
    #[track_caller]
    pub fn new_page(&self) -> Page {
        match self.open_page(None) {
            Ok(page) => page,
            Err(e) => panic!("cannot open a page: {e}"),
        }
    }

    /// A new tab in a browser context of its own, like an incognito window: it shares no
    /// cookies, storage or cache with any other page, so it can hold a second login.
    #[track_caller]
    pub fn new_incognito_page(&self) -> Page {
        let opened = self
            .conn
            .call(None, "Target.createBrowserContext", json!({}))
            .and_then(|created| {
                let context = str_field(&created, "browserContextId")?;
                self.open_page(Some(context))
            });
        match opened {
            Ok(page) => page,
            Err(e) => panic!("cannot open an incognito page: {e}"),
        }
    }

    fn open_page(&self, context: Option<String>) -> Result<Page, String> {
        let mut params = json!({ "url": "about:blank" });
        if let Some(context) = &context {
            params["browserContextId"] = json!(context);
        }
        let created = self.conn.call(None, "Target.createTarget", params)?;
        let target = str_field(&created, "targetId")?;
        let attached = self.conn.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )?;
        let session = str_field(&attached, "sessionId")?;
        // Registered before any domain is enabled, so no event of this page goes unfiled.
        let events = Arc::new(Mutex::new(PageEvents::default()));
        lock(&self.conn.pages).insert(session.clone(), Arc::clone(&events));
        let page = Page {
            conn: Arc::clone(&self.conn),
            session,
            target,
            context,
            events,
            out_dir: self.out_dir.clone(),
        };
        for (method, params) in [
            ("Runtime.enable", json!({})),
            ("Page.enable", json!({})),
            ("Page.setLifecycleEventsEnabled", json!({ "enabled": true })),
            ("Log.enable", json!({})),
            ("Network.enable", json!({})),
        ] {
            page.call(method, params)?;
        }
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, Chromium closes its windows and then the socket; the kill then ends
        // whatever is left. Its exit is not awaited by reaping it, since a reaped
        // group leader frees its id for another process group, which the kill could then hit.
        self.conn.notify(None, "Browser.close", json!({}));
        let _ = poll(CLOSE_GRACE, || self.conn.is_closed());
        let status = self.process.stop();
        self.conn.shut_down();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!("chromium {status}; its log is {}", self.log.display());
        }
    }
}

impl Page {
    /// Send one DevTools command to this page and wait for its answer; a protocol error, a
    /// closed browser or no answer within 30 s is an `Err` that names the method.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.conn.call(Some(&self.session), method, params)
    }

    /// Load `url` and wait until the new document and everything it loads has loaded
    /// (`readyState` "complete"). Forgets the transfers of the page before.
    #[track_caller]
    pub fn goto(&self, url: &str) {
        lock(&self.events).start_navigation();
        let navigated = match self.call("Page.navigate", json!({ "url": url })) {
            Ok(navigated) => navigated,
            Err(e) => panic!("cannot navigate to {url}: {e}"),
        };
        if let Some(error) = navigated["errorText"].as_str() {
            panic!("navigating to {url} failed: {error}");
        }
        // A new document has a loader of its own; waiting for its `load` keeps the previous
        // document's "complete" from passing for the new one. A same-document navigation
        // (only the #fragment changes) has no loader.
        if let Some(loader) = navigated["loaderId"].as_str() {
            let loaded = poll(PATIENCE, || lock(&self.events).loaded.contains(loader));
            if !loaded {
                panic!("{url} did not finish loading within {PATIENCE:?}");
            }
        }
        self.wait_for(
            &format!("{url} loaded"),
            "document.readyState === 'complete'",
            PATIENCE,
        );
    }

    /// The value of the JavaScript expression `js` (awaited when it is a promise), as JSON;
    /// `undefined`, functions and DOM nodes come back as `null` or `{}`. Panics when it throws.
    #[track_caller]
    pub fn eval(&self, js: &str) -> Value {
        match self.evaluate(js) {
            Ok(Ok(value)) => value,
            Ok(Err(thrown)) => panic!("`{js}` threw: {thrown}"),
            Err(e) => panic!("cannot evaluate `{js}`: {e}"),
        }
    }

    /// Evaluate the expression `condition` every 25 ms until its value is truthy, and return
    /// that value. After `timeout` it panics naming `what`, the condition and its last value,
    /// and leaves a screenshot `timeout-<what>.png` in the output directory. An expression that
    /// throws fails at once; the page navigating away in between is waited out.
    #[track_caller]
    pub fn wait_for(&self, what: &str, condition: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let last = loop {
            let last = match self.evaluate(condition) {
                Ok(Ok(value)) if truthy(&value) => return value,
                Ok(Ok(value)) => value.to_string(),
                Ok(Err(thrown)) => panic!("waiting for {what}: `{condition}` threw: {thrown}"),
                // The document was replaced under the call; the next one asks the new one.
                Err(e) => format!("(no value: {e})"),
            };
            if Instant::now() >= deadline {
                break last;
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        let shot = self
            .out_dir
            .join(format!("timeout-{}.png", file_name(what)));
        let saved = match self.try_screenshot(&shot) {
            Ok(()) => format!("screenshot: {}", shot.display()),
            Err(e) => format!("no screenshot: {e}"),
        };
        panic!(
            "timed out after {timeout:?} waiting for {what}: `{condition}` was last {last}; \
             {saved}; page errors so far: {:?}",
            self.errors()
        );
    }

    /// Click the middle of the first element matching the CSS `selector` with the mouse, as a
    /// person would, after scrolling it into view. Panics when no element matches, or it is not
    /// displayed, disabled, or covered by another element at that point.
    #[track_caller]
    pub fn click(&self, selector: &str) {
        let sel = js_string(selector);
        let target = self.eval(&format!(
            "(() => {{
                const el = document.querySelector({sel});
                if (!el) return {{ error: 'no element matches it' }};
                if (el.disabled) return {{ error: 'it is disabled' }};
                el.scrollIntoView({{ block: 'center', inline: 'center', behavior: 'instant' }});
                const r = el.getBoundingClientRect();
                if (r.width === 0 || r.height === 0) return {{ error: 'it is not displayed' }};
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                if (!hit || !(hit === el || el.contains(hit))) {{
                    return {{ error: 'it is covered by ' + (hit ? hit.outerHTML.slice(0, 200) : 'nothing') }};
                }}
                return {{ x, y }};
            }})()"
        ));
        if let Some(error) = target["error"].as_str() {
            panic!("cannot click {selector}: {error}");
        }
        let (x, y) = (&target["x"], &target["y"]);
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            let event = json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 });
            if let Err(e) = self.call("Input.dispatchMouseEvent", event) {
                panic!("cannot click {selector}: {e}");
            }
        }
    }

    /// Set the value of the input, textarea or select matching `selector`, then fire `input`
    /// and `change` as typing or choosing would. Panics when it does not take the value (a
    /// select without that option).
    #[track_caller]
    pub fn fill(&self, selector: &str, value: &str) {
        let (sel, val) = (js_string(selector), js_string(value));
        let outcome = self.eval(&format!(
            "(() => {{
                const el = document.querySelector({sel});
                if (!el) return 'no element matches it';
                if (!('value' in el)) return 'it is a ' + el.tagName + ', which has no value';
                if (el.disabled || el.readOnly) return 'it is disabled or read-only';
                el.focus();
                el.value = {val};
                el.dispatchEvent(new Event('input', {{ bubbles: true }}));
                el.dispatchEvent(new Event('change', {{ bubbles: true }}));
                return el.value === {val} ? null : 'it took the value ' + JSON.stringify(el.value);
            }})()"
        ));
        if let Some(error) = outcome.as_str() {
            panic!("cannot fill {selector} with {value:?}: {error}");
        }
    }

    /// The text a person sees in the first element matching `selector` (`innerText`).
    #[track_caller]
    pub fn text(&self, selector: &str) -> String {
        let sel = js_string(selector);
        match self.eval(&format!("document.querySelector({sel})?.innerText ?? null")) {
            Value::String(text) => text,
            _ => panic!("no element matches {selector}"),
        }
    }

    /// Save what the viewport shows as a PNG at `path`.
    #[track_caller]
    pub fn screenshot(&self, path: &Path) {
        if let Err(e) = self.try_screenshot(path) {
            panic!("cannot save a screenshot to {}: {e}", path.display());
        }
    }

    /// Lay the page out for a `width` × `height` CSS pixel viewport; `mobile` also honours the
    /// page's `<meta name=viewport>` and makes the pointer a touch screen.
    #[track_caller]
    pub fn viewport(&self, width: u32, height: u32, mobile: bool) {
        let metrics = json!({
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile,
        });
        let touch = json!({ "enabled": mobile });
        for (method, params) in [
            ("Emulation.setDeviceMetricsOverride", metrics),
            ("Emulation.setTouchEmulationEnabled", touch),
        ] {
            if let Err(e) = self.call(method, params) {
                panic!("cannot set the viewport to {width}x{height}: {e}");
            }
        }
    }

    /// Make `prefers-color-scheme` match `dark`, or `light`.
    #[track_caller]
    pub fn emulate_dark(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        let features = json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] });
        if let Err(e) = self.call("Emulation.setEmulatedMedia", features) {
            panic!("cannot emulate prefers-color-scheme: {scheme}: {e}");
        }
    }

    /// What went wrong on this page so far, one line each: `console.error` and
    /// `console.warn` calls, uncaught exceptions and rejections, and the browser's own errors
    /// (Content-Security-Policy violations, failed loads).
    pub fn errors(&self) -> Vec<String> {
        self.settle();
        lock(&self.events).errors.clone()
    }

    /// [`Page::errors`], forgetting them, so a test can check one step at a time.
    pub fn take_errors(&self) -> Vec<String> {
        self.settle();
        std::mem::take(&mut lock(&self.events).errors)
    }

    /// The dialogs the page opened so far, as `alert: message`, `confirm: …` or `prompt: …`.
    /// Each was accepted (OK) at once, since an open dialog blocks the page.
    pub fn dialogs(&self) -> Vec<String> {
        self.settle();
        lock(&self.events).dialogs.clone()
    }

    /// Every response the page loaded in full since the last [`Page::goto`]. Waits first until
    /// no request awaits its response and every document, script, style sheet, image or font
    /// has been read to its end. A `fetch` or XHR counts once its body was read to the end,
    /// which the page decides (one it ignores, or an event stream, never ends), so it is not
    /// waited for. Panics naming the requests still loading after 30 s.
    #[track_caller]
    pub fn transferred(&self) -> Vec<Transfer> {
        let settled = poll(PATIENCE, || lock(&self.events).loading().is_empty());
        let events = lock(&self.events);
        if !settled {
            panic!("still loading after {PATIENCE:?}: {:?}", events.loading());
        }
        events.transferred.clone()
    }

    /// The cookies the browser would send to this page's URL, as DevTools describes them
    /// (`name`, `value`, `httpOnly`, `secure`, `sameSite`, …).
    #[track_caller]
    pub fn cookies(&self) -> Value {
        match self.call("Network.getCookies", json!({})) {
            Ok(answer) => answer["cookies"].clone(),
            Err(e) => panic!("cannot read the cookies: {e}"),
        }
    }

    /// `Ok(Ok(value))`, `Ok(Err(what it threw))`, or `Err` when the call itself failed.
    fn evaluate(&self, js: &str) -> Result<Result<Value, String>, String> {
        let answer = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Ok(Err(exception_text(details)));
        }
        Ok(Ok(answer["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null)))
    }

    fn try_screenshot(&self, path: &Path) -> Result<(), String> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(str_field(&shot, "data")?)
            .map_err(|e| format!("the screenshot is not base64: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| e.to_string())
    }

    /// Make sure every event the page sent before now has been filed: the renderer sends a
    /// page's console and log events in order with its answers, so one answered call suffices.
    fn settle(&self) {
        let _ = self.evaluate("0");
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        lock(&self.conn.pages).remove(&self.session);
        let target = json!({ "targetId": self.target });
        self.conn.notify(None, "Target.closeTarget", target);
        if let Some(context) = &self.context {
            let context = json!({ "browserContextId": context });
            self.conn
                .notify(None, "Target.disposeBrowserContext", context);
        }
    }
}

/// What one page's events have told so far; the reader thread feeds [`PageEvents::record`].
#[derive(Default)]
struct PageEvents {
    errors: Vec<String>,
    /// The alerts, confirms and prompts the page opened (all accepted), as `type: message`.
    dialogs: Vec<String>,
    /// Loaders (one per document) whose `load` event fired.
    loaded: HashSet<String>,
    /// Requests sent and not yet finished or failed, by request id.
    requests: HashMap<String, Request>,
    transferred: Vec<Transfer>,
}

/// A request on its way, as the Network domain told of it.
struct Request {
    url: String,
    /// The resource type: `Document`, `Script`, `Fetch`, `EventSource`, …
    kind: String,
    /// The MIME type, once the response headers came.
    mime: Option<String>,
}

impl Request {
    /// Whether the browser is still loading it on its own: it awaits its response, or it is a
    /// resource whose whole body the browser reads (unlike a `fetch` body, read by the page).
    fn loading(&self) -> bool {
        self.mime.is_none()
            || !matches!(self.kind.as_str(), "Fetch" | "XHR" | "EventSource" | "Ping")
    }
}

impl PageEvents {
    /// Forget the previous document's loads, so late events of its requests count nowhere.
    fn start_navigation(&mut self) {
        self.loaded.clear();
        self.requests.clear();
        self.transferred.clear();
    }

    /// The URLs of the requests [`Request::loading`].
    fn loading(&self) -> Vec<&str> {
        let loading = self.requests.values().filter(|r| r.loading());
        loading.map(|r| r.url.as_str()).collect()
    }

    fn record(&mut self, method: &str, params: &Value) {
        let id = || params["requestId"].as_str().unwrap_or_default().to_string();
        match method {
            "Runtime.consoleAPICalled" => {
                let kind = params["type"].as_str().unwrap_or_default();
                if matches!(kind, "error" | "warning" | "assert") {
                    let args: Vec<String> = match params["args"].as_array() {
                        Some(args) => args.iter().map(remote_object_text).collect(),
                        None => Vec::new(),
                    };
                    let at = stack_location(&params["stackTrace"]);
                    self.errors
                        .push(format!("console.{kind}: {}{at}", args.join(" ")));
                }
            }
            "Runtime.exceptionThrown" => {
                let text = exception_text(&params["exceptionDetails"]);
                self.errors.push(format!("uncaught: {text}"));
            }
            "Log.entryAdded" => {
                let entry = &params["entry"];
                if entry["level"] == "error" {
                    let source = entry["source"].as_str().unwrap_or("log");
                    let text = entry["text"].as_str().unwrap_or_default();
                    let at = match entry["url"].as_str() {
                        Some(url) if !url.is_empty() => format!(" ({url})"),
                        _ => String::new(),
                    };
                    self.errors.push(format!("{source}: {text}{at}"));
                }
            }
            "Page.javascriptDialogOpening" => {
                let kind = params["type"].as_str().unwrap_or("dialog");
                let message = params["message"].as_str().unwrap_or_default();
                self.dialogs.push(format!("{kind}: {message}"));
            }
            "Inspector.targetCrashed" => self.errors.push("the page crashed".to_string()),
            "Page.lifecycleEvent" if params["name"] == "load" => {
                let loader = params["loaderId"].as_str().unwrap_or_default();
                self.loaded.insert(loader.to_string());
            }
            "Network.requestWillBeSent" => {
                // A redirect sends this again with the same id, for the new URL.
                let request = Request {
                    url: params["request"]["url"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    kind: params["type"].as_str().unwrap_or_default().to_string(),
                    mime: None,
                };
                self.requests.insert(id(), request);
            }
            "Network.responseReceived" => {
                if let Some(request) = self.requests.get_mut(&id()) {
                    let mime = params["response"]["mimeType"].as_str().unwrap_or_default();
                    request.mime = Some(mime.to_string());
                    request.kind = params["type"].as_str().unwrap_or_default().to_string();
                }
            }
            "Network.loadingFinished" => {
                if let Some(request) = self.requests.remove(&id()) {
                    self.transferred.push(Transfer {
                        url: request.url,
                        bytes: params["encodedDataLength"].as_f64().unwrap_or(0.0) as u64,
                        mime: request.mime.unwrap_or_default(),
                    });
                }
            }
            "Network.loadingFailed" => {
                self.requests.remove(&id());
            }
            _ => {}
        }
    }
}

/// The websocket to the browser, shared by the [`Browser`], its pages and the reader thread.
struct Connection {
    /// The write half: a second websocket over a clone of the same TCP stream. Only the reader
    /// thread reads, and Chromium sends no pings that it would have to answer on this socket.
    writer: Mutex<WebSocket<TcpStream>>,
    /// One more handle on the stream, to shut it down even while a writer is stuck.
    socket: TcpStream,
    next_id: AtomicU64,
    calls: Mutex<Calls>,
    /// The events of each attached page, by session id.
    pages: Mutex<HashMap<String, Arc<Mutex<PageEvents>>>>,
}

/// Callers waiting for answers, and why no more will come once the connection is gone.
#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, mpsc::Sender<Result<Value, String>>>,
    closed: Option<String>,
}

impl Connection {
    /// Connect to the browser endpoint `ws://host:port/devtools/browser/…` and start the reader.
    fn open(endpoint: &str) -> Result<(Arc<Connection>, JoinHandle<()>), String> {
        let authority = endpoint
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("{endpoint} is no ws:// URL"))?;
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| format!("{authority} has no address"))?;
        let stream = TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| e.to_string())?;
        // Commands are small and answered one at a time: Nagle would hold each one back.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| e.to_string())?;
        // Screenshots of long pages are larger than the default frame limit; the peer is ours.
        let config = WebSocketConfig::default()
            .max_frame_size(None)
            .max_message_size(None);
        let (reader_ws, _) =
            tungstenite::client::client_with_config(endpoint, stream, Some(config))
                .map_err(|e| format!("websocket handshake: {e}"))?;
        let stream = reader_ws.get_ref();
        // From here the reader blocks until the browser speaks; shutting the socket wakes it.
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        let write_stream = stream.try_clone().map_err(|e| e.to_string())?;
        let socket = stream.try_clone().map_err(|e| e.to_string())?;
        let writer = WebSocket::from_raw_socket(write_stream, Role::Client, Some(config));
        let conn = Arc::new(Connection {
            writer: Mutex::new(writer),
            socket,
            next_id: AtomicU64::new(1),
            calls: Mutex::new(Calls::default()),
            pages: Mutex::new(HashMap::new()),
        });
        let shared = Arc::clone(&conn);
        let reader = std::thread::Builder::new()
            .name("cdp-reader".to_string())
            .spawn(move || shared.read_all(reader_ws))
            .map_err(|e| e.to_string())?;
        Ok((conn, reader))
    }

    /// Send `method` (to the page with `session`, or to the browser) and wait for its answer.
    fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = mpsc::channel();
        {
            let mut calls = lock(&self.calls);
            if let Some(why) = &calls.closed {
                return Err(format!("{method}: the browser connection is gone: {why}"));
            }
            calls.waiting.insert(id, answer);
        }
        if let Err(e) = self.send(id, session, method, params) {
            lock(&self.calls).waiting.remove(&id);
            return Err(format!("{method}: cannot send: {e}"));
        }
        match answered.recv_timeout(CALL_TIMEOUT) {
            Ok(answer) => answer.map_err(|e| format!("{method}: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.calls).waiting.remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let why = lock(&self.calls).closed.clone().unwrap_or_default();
                Err(format!("{method}: the browser connection is gone: {why}"))
            }
        }
    }

    /// Send `method` without waiting for the answer, which the reader then drops; for clean-up
    /// that must not hang on a browser that is already gone.
    fn notify(&self, session: Option<&str>, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.send(id, session, method, params);
    }

    fn send(
        &self,
        id: u64,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<(), tungstenite::Error> {
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        lock(&self.writer).send(Message::text(message.to_string()))
    }

    /// The reader thread: route every message until the socket closes, then fail whoever waits.
    fn read_all(&self, mut socket: WebSocket<TcpStream>) {
        let why = loop {
            match socket.read() {
                Ok(Message::Text(text)) => self.dispatch(text.as_str()),
                Ok(Message::Close(_)) => break "the browser closed it".to_string(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
        };
        let mut calls = lock(&self.calls);
        calls.closed = Some(why);
        // Dropping the senders wakes every waiting caller at once.
        calls.waiting.clear();
    }

    fn dispatch(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = message["id"].as_u64() {
            let Some(answer) = lock(&self.calls).waiting.remove(&id) else {
                return; // a notification's answer, or one whose caller gave up
            };
            let outcome = match message.get("error") {
                Some(error) => Err(protocol_error_text(error)),
                None => Ok(message["result"].clone()),
            };
            let _ = answer.send(outcome);
        } else if let (Some(method), Some(session)) =
            (message["method"].as_str(), message["sessionId"].as_str())
        {
            if method == "Page.javascriptDialogOpening" {
                // An open alert, confirm or prompt blocks the page, and every later call with
                // it: accept it at once, as a person clicking OK would.
                let accept = json!({ "accept": true });
                self.notify(Some(session), "Page.handleJavaScriptDialog", accept);
            }
            let events = lock(&self.pages).get(session).cloned();
            if let Some(events) = events {
                lock(&events).record(method, &message["params"]);
            }
        }
    }

    /// Whether the reader has seen the socket close.
    fn is_closed(&self) -> bool {
        lock(&self.calls).closed.is_some()
    }

    /// Close the socket under the reader, which then ends.
    fn shut_down(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// The browser's process group, killed when dropped.
struct BrowserProcess {
    child: Option<Child>,
}

impl BrowserProcess {
    fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kill the browser and whatever is left of its process group, reap it, and say how it
    /// ended.
    fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "was already stopped".to_string();
        };
        if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) takes plain integers. A negative pid names the process group that
            // `process_group(0)` made for the browser; its leader is not reaped yet, so the id
            // is still the browser's.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        match child.wait() {
            Ok(status) => format!("exited with {status}"),
            Err(e) => format!("could not be reaped: {e}"),
        }
    }
}

impl Drop for BrowserProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `$CUBE_CHROMIUM`, else the first browser binary on `PATH`.
fn find_browser() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CUBE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    BROWSER_NAMES.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Copy the browser's stderr into `log` until it closes, and return the DevTools endpoint it
/// announces, waiting at most [`PATIENCE`] for it.
fn read_endpoint(stderr: std::process::ChildStderr, log: &Path) -> Result<String, String> {
    let mut file = std::fs::File::create(log).map_err(|e| format!("cannot create {log:?}: {e}"))?;
    let (found, endpoint) = mpsc::channel();
    // The thread keeps draining after the endpoint is found, so the pipe never fills up and
    // blocks the browser.
    std::thread::Builder::new()
        .name("chromium-stderr".to_string())
        .spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some(url) = line.split(LISTENING).nth(1) {
                    let _ = found.send(url.trim().to_string());
                }
            }
        })
        .map_err(|e| e.to_string())?;
    match endpoint.recv_timeout(PATIENCE) {
        Ok(url) => Ok(url),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("nothing within {PATIENCE:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("it closed stderr first".to_string()),
    }
}

/// Call `done` every [`POLL_INTERVAL`] until it holds or `timeout` passed; whether it held.
fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// JavaScript's truthiness, for the values `returnByValue` can carry.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `text` as a JavaScript string literal (JSON's string syntax is a subset of JavaScript's).
fn js_string(text: &str) -> String {
    Value::from(text).to_string()
}

/// `what` with everything but letters, digits and dashes made a dash, to name a file.
fn file_name(what: &str) -> String {
    what.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn str_field(value: &Value, field: &str) -> Result<String, String> {
    value[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("the answer {value} has no {field}"))
}

fn protocol_error_text(error: &Value) -> String {
    let message = error["message"].as_str().unwrap_or("unknown error");
    match error["data"].as_str() {
        Some(data) => format!("{message} ({data})"),
        None => message.to_string(),
    }
}

/// An exception as DevTools describes it: its message and stack when it is an `Error`.
fn exception_text(details: &Value) -> String {
    let exception = &details["exception"];
    let text = exception["description"]
        .as_str()
        .map(str::to_string)
        .or_else(|| exception.get("value").map(Value::to_string))
        .unwrap_or_else(|| details["text"].as_str().unwrap_or("exception").to_string());
    match details["url"].as_str() {
        Some(url) if !url.is_empty() => format!("{text} ({url}:{})", line_number(details)),
        _ => text,
    }
}

/// A console argument as the console would print it.
fn remote_object_text(arg: &Value) -> String {
    match arg.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(value) => value.to_string(),
        None => arg["description"]
            .as_str()
            .or(arg["unserializableValue"].as_str())
            .or(arg["type"].as_str())
            .unwrap_or_default()
            .to_string(),
    }
}

/// ` (url:line)` of the top frame of a stack trace, or nothing.
fn stack_location(stack: &Value) -> String {
    let frame = &stack["callFrames"][0];
    match frame["url"].as_str() {
        Some(url) if !url.is_empty() => format!(" ({url}:{})", line_number(frame)),
        _ => String::new(),
    }
}

/// The 1-based line of a DevTools location, which counts from 0.
fn line_number(location: &Value) -> u64 {
    location["lineNumber"].as_u64().unwrap_or(0) + 1
}

/// Lock `mutex` even if a panicking test poisoned it: the data stays consistent, since every
/// critical section here is a plain insert, remove or copy.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
