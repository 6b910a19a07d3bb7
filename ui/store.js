// What the page knows of the cluster, kept current by the manager's event stream.
//
// On (re)connecting, the stream is opened first and the snapshot (nodes, services, counts)
// fetched after: events that arrive meanwhile are held and applied over the snapshot in order,
// so nothing that changed in between is missed, and nothing older overwrites something newer.
// Task events carry the whole task and go to the views that show it; node events carry only
// what changed, so they (and task events, which move allocations and counts) cause a refetch
// of the nodes and counts, at most a few times a second. Nothing is fetched on a timer.

import { get } from "./api.js";

const listeners = new Map();

/** Call `fn(payload)` on each `topic`: "task", "service", "nodes", "counts", "feed",
 *  "connection", "reset". Returns a function that stops it. */
export function on(topic, fn) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(fn);
  return () => listeners.get(topic)?.delete(fn);
}

function emit(topic, payload) {
  for (const fn of listeners.get(topic) ?? []) {
    try {
      fn(payload);
    } catch (e) {
      console.error(`a ${topic} listener failed`, e);
    }
  }
}

export const state = {
  /** Whether the API asks for tokens, and this page's role: "read" or "write". */
  auth: false,
  role: null,
  nodes: [],
  services: new Map(),
  counts: {},
  health: null,
  feed: [],
  /** "connecting", "live" or "lost". */
  connection: "connecting",
  /** When the page last heard from the manager (ms). */
  lastEvent: 0,
};

const FEED = 40;
let source = null;
let held = null;
let retry = 0;
let retryTimer = null;

/** Open the stream and load the snapshot; again after a loss. */
export function connect() {
  disconnect();
  setConnection("connecting");
  held = [];
  // The last few events first (for the feed), then what happens from now on; the browser's
  // own reconnects send Last-Event-ID and get what was missed replayed instead.
  source = new EventSource(`/events?tail=${FEED}`, { withCredentials: true });
  source.addEventListener("open", () => {
    retry = 0;
    setConnection("live");
    if (held) snapshot();
  });
  source.addEventListener("error", () => {
    if (source?.readyState === EventSource.CLOSED) {
      // The browser gave up (the manager refused the stream): try again ourselves, with backoff.
      setConnection("lost");
      source.close();
      source = null;
      // If it was refused for want of a session, this read says so (and the page signs in).
      get("/health").catch(() => {});
      clearTimeout(retryTimer);
      retryTimer = setTimeout(connect, Math.min(1000 * 2 ** retry++, 15000));
    } else {
      setConnection("lost");
    }
  });
  for (const type of ["task", "service", "node"]) {
    source.addEventListener(type, (e) => receive(type, e));
  }
  source.addEventListener("reset", () => {
    // Events we missed are no longer retained: everything shown must be read afresh.
    held = [];
    snapshot();
    emit("reset");
  });
}

export function disconnect() {
  clearTimeout(retryTimer);
  source?.close();
  source = null;
}

function setConnection(value) {
  if (state.connection === value) return;
  const was = state.connection;
  state.connection = value;
  emit("connection", { value, was });
  // Back from a loss: what changed meanwhile was replayed, but counts and nodes may have
  // moved in ways no event says (a node's heartbeat); read them again.
  if (value === "live" && was === "lost") refresh();
}

function receive(type, e) {
  let event;
  try {
    event = JSON.parse(e.data);
  } catch {
    return;
  }
  event.receivedAt = performance.timeOrigin + performance.now();
  state.lastEvent = Date.now();
  if (held) held.push(event);
  else apply(event);
}

async function snapshot() {
  try {
    const [nodes, services, health] = await Promise.all([get("/nodes"), get("/services"), get("/health")]);
    state.nodes = nodes;
    state.services = new Map(services.map((s) => [s.name, s]));
    setHealth(health);
    emit("nodes", state.nodes);
    emit("service", null);
  } catch (e) {
    if (e.status !== 401) console.warn("cannot read the cluster", e);
  }
  const pending = held ?? [];
  held = null;
  for (const event of pending) apply(event);
}

function apply(event) {
  if (event.type === "task") {
    emit("task", event);
    // A service's counts (running, updated) follow its tasks, and its own events come only
    // when its record changes: read the services again too.
    if (event.object?.service) servicesStale = true;
    scheduleRefresh();
  } else if (event.type === "service") {
    if (event.action === "removed") state.services.delete(event.name);
    else if (event.object && event.object.mode) state.services.set(event.name, event.object);
    emit("service", event);
  } else if (event.type === "node") {
    scheduleRefresh();
  }
  state.feed.unshift(event);
  state.feed.length = Math.min(state.feed.length, FEED);
  emit("feed", event);
}

let refreshTimer = null;
let refreshing = false;
let again = false;
let servicesStale = false;

/** Read nodes and counts again soon, coalescing bursts. */
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refresh();
  }, 150);
}

export async function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  const withServices = servicesStale;
  servicesStale = false;
  try {
    const [nodes, health, services] = await Promise.all([
      get("/nodes"),
      get("/health"),
      withServices ? get("/services") : null,
    ]);
    state.nodes = nodes;
    setHealth(health);
    emit("nodes", nodes);
    if (services) {
      state.services = new Map(services.map((s) => [s.name, s]));
      emit("service", null);
    }
  } catch (e) {
    // A 401 signs the page out (api.js); anything else is the connection, which the bar shows.
    if (e.status !== 401) console.warn("cannot read the nodes", e);
    servicesStale ||= withServices;
  } finally {
    refreshing = false;
    if (again) {
      again = false;
      scheduleRefresh();
    }
  }
}

function setHealth(health) {
  state.health = health;
  state.counts = health?.states ?? {};
  emit("counts", state.counts);
}

/** Whether this page may change things (a write token's session, or an open API). */
export const canWrite = () => state.role === "write";
