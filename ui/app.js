// The dashboard's entry: sign in if the manager asks for it, follow its events, and draw the
// page the address names (#/, #/tasks, #/tasks/ID, #/services, #/services/NAME, #/nodes).

import { api, get, setSessionKey, whenUnauthorized } from "./api.js";
import { $, tickAges, toast } from "./dom.js";
import { loginView } from "./forms.js";
import { connect, disconnect, on, state } from "./store.js";
import * as views from "./views.js";

let stopView = () => {};
let started = false;
let signingIn = false;

function route() {
  if (!started) return;
  stopView();
  stopView = () => {};
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query ?? "");
  let section;
  let arg;
  try {
    [section = "overview", arg] = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    section = null;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = $("#main");
  const draw = {
    overview: () => views.overview(main),
    tasks: () => (arg ? views.task(main, arg) : views.tasks(main, params)),
    services: () => (arg ? views.service(main, arg) : views.services(main)),
    nodes: () => views.nodes(main),
  }[section];
  if (!draw) {
    location.hash = "#/";
    return;
  }
  stopView = draw() ?? (() => {});
  document.title = `${arg ?? section[0].toUpperCase() + section.slice(1)} · Cube`;
  window.scrollTo(0, 0);
  // Keyboard and screen reader users land on the new page, not on a link that is gone.
  if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

function start(session) {
  signingIn = false;
  state.auth = session.auth;
  state.role = session.role;
  // Only the sign-in's answer carries the key; a page that reloads keeps the one it stored.
  if (session.csrf) setSessionKey(session.csrf);
  document.body.dataset.role = session.role;
  $("#role").hidden = session.role !== "read";
  $("#logout").hidden = !session.auth;
  $("#nav").hidden = false;
  $("#live").hidden = false;
  started = true;
  connect();
  route();
}

function signIn(message) {
  if (signingIn) return;
  signingIn = true;
  started = false;
  disconnect();
  stopView();
  stopView = () => {};
  setSessionKey(null);
  $("#nav").hidden = true;
  $("#live").hidden = true;
  $("#role").hidden = true;
  $("#logout").hidden = true;
  $("#banner").hidden = true;
  document.title = "Sign in · Cube";
  loginView($("#main"), { message, onLogin: start });
}

function showConnection({ value, was }) {
  const live = $("#live");
  live.dataset.state = value;
  live.textContent = { live: "Live", connecting: "Connecting…", lost: "Connection lost, retrying…" }[value];
  const banner = $("#banner");
  if (value === "lost") {
    banner.textContent = `Lost the connection to the manager at ${new Date().toLocaleTimeString()}. What you see may be out of date; reconnecting…`;
    banner.hidden = false;
  } else if (value === "live") {
    banner.hidden = true;
    if (was === "lost") toast("Reconnected to the manager");
  }
}

function applyTheme(theme) {
  if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  const dark = theme === "dark" || (!theme && matchMedia("(prefers-color-scheme: dark)").matches);
  $("#theme").setAttribute("aria-pressed", String(dark));
}

function toggleTheme() {
  const dark =
    document.documentElement.dataset.theme === "dark" ||
    (!document.documentElement.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches);
  const next = dark ? "light" : "dark";
  localStorage.setItem("cube-theme", next);
  applyTheme(next);
}

async function boot() {
  applyTheme(localStorage.getItem("cube-theme"));
  $("#theme").addEventListener("click", toggleTheme);
  $("#logout").addEventListener("click", async () => {
    try {
      await api("POST", "/ui/logout");
    } catch {
      // Signed out here whatever the manager says.
    }
    signIn();
  });
  window.addEventListener("hashchange", route);
  on("connection", showConnection);
  // Events were missed and are no longer held: draw the page afresh from the API.
  on("reset", route);
  whenUnauthorized(() => signIn("Your session ended (it expired, or the manager restarted): sign in again."));
  // The ages on the page ("5 min ago") move with the clock; nothing is fetched.
  setInterval(() => tickAges(), 5000);
  let session;
  try {
    session = await get("/ui/session");
  } catch (e) {
    $("#banner").textContent = e.message;
    $("#banner").hidden = false;
    return;
  }
  if (session.auth && !session.role) signIn();
  else start(session);
}

boot();
