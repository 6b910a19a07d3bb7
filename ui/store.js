// What the page knows of the cluster, kept current by the manager's event stream.
//
// The stream is read with fetch rather than EventSource, so that it carries the session's key
// like every other request, and so that a refusal (401: the session is gone) can be told from a
// dropped connection. The first connection asks for the last few events (`tail`) and then reads
// the snapshot (nodes, services, counts); events arriving meanwhile are held and applied over the
// snapshot in order, so nothing that changed in between is missed and nothing older overwrites
// something newer. Every later connection continues after the last event seen (`since`), and
// the manager replays what was missed, or says `reset` when it no longer holds it, and the page
// reads everything again.
//
// Task and service events carry the whole object and go to the views that show it; node events
// carry only what changed, so they (and task events, which move allocations, counts and services'
// counts) make the page read nodes and counts again, at most once a second. Nothing is fetched
// on a timer.

import { get, sessionHeaders, unauthorized } from "./api.js";

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
};

/** Events the feed keeps, and the tail the first connection asks for. */
const FEED = 40;
/** Longest wait between two attempts to reconnect. */
const MAX_BACKOFF = 10_000;

/** Bumped by every connect and disconnect: a loop of an older one stops. */
let generation = 0;
let controller = null;
/** The last event's index: where a reconnection continues. */
let lastId = null;
/** Events held while the snapshot is read (null when none is being read). */
let held = null;

/** Follow the manager's events, reconnecting until `disconnect`. */
export function connect() {
  disconnect();
  lastId = null;
  state.feed = [];
  follow(++generation);
}

export function disconnect() {
  generation += 1;
  controller?.abort();
  controller = null;
  held = null;
}

async function follow(gen) {
  let attempt = 0;
  while (gen === generation) {
    const fresh = lastId === null;
    controller = new AbortController();
    try {
      const res = await fetch(fresh ? `/events?tail=${FEED}` : `/events?since=${lastId}`, {
        headers: sessionHeaders({ Accept: "text/event-stream" }),
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      if (gen !== generation) return;
      if (res.status === 401) {
        unauthorized();
        return;
      }
      if (!res.ok) throw new Error(`the event stream answered ${res.status}`);
      attempt = 0;
      if (fresh) {
        held = [];
        snapshot(gen);
      }
      setConnection("live");
      await read(res.body, gen);
    } catch {
      // A dropped connection, or the manager gone: below, the page says so and tries again.
    }
    if (gen !== generation) return;
    setConnection("lost");
    await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** attempt++, MAX_BACKOFF)));
  }
}

/** Read server-sent events from `body` until it ends. */
async function read(body, gen) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = { type: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done || gen !== generation) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line === "") {
        if (event.data.length) receive(event.type, event.data.join("\n"), gen);
        event = { type: "message", data: [] };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
      }
    }
  }
}

function receive(type, data, gen) {
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return;
  }
  if (event.index !== undefined) lastId = event.index;
  if (type === "reset") {
    // What was missed is no longer held: everything shown must be read afresh.
    held = [];
    snapshot(gen);
    emit("reset");
    return;
  }
  if (held) {
    event.replayed = true;
    held.push(event);
  } else {
    apply(event);
  }
}

async function snapshot(gen) {
  try {
    const [nodes, services, health] = await Promise.all([get("/nodes"), get("/services"), get("/health")]);
    if (gen !== generation) return;
    state.nodes = nodes;
    state.services = new Map(services.map((s) => [s.name, s]));
    setHealth(health);
    emit("nodes", state.nodes);
    emit("service", null);
  } catch (e) {
    if (e.status !== 401) console.warn("cannot read the cluster", e);
  }
  if (gen !== generation) return;
  const pending = held ?? [];
  held = null;
  for (const event of pending) apply(event);
}

function setConnection(value) {
  if (state.connection === value) return;
  const was = state.connection;
  state.connection = value;
  emit("connection", { value, was });
  // Back from a loss: missed events were replayed, but nodes' heartbeats are not events.
  if (value === "live" && was === "lost") scheduleRefresh();
}

function apply(event) {
  if (event.type === "task") {
    emit("task", event);
    // A service's counts (running, updated) follow its tasks, and its own events come only
    // when its record changes: read the services again too.
    if (event.object?.service) servicesStale = true;
    scheduleRefresh();
  } else if (event.type === "service") {
    if (event.action === "deleted" || event.action === "removed") state.services.delete(event.name);
    else if (event.object?.mode) state.services.set(event.name, event.object);
    emit("service", event);
  } else if (event.type === "node") {
    scheduleRefresh();
  }
  state.feed.unshift(event);
  state.feed.length = Math.min(state.feed.length, FEED);
  emit("feed", event);
}

/** Least time between two reads of nodes and counts. */
const REFRESH_GAP = 1000;
let refreshTimer = null;
let lastRefresh = 0;
let refreshing = false;
/** Something changed while a read was out: read again after it. */
let dirty = false;
let servicesStale = false;

/** Read nodes and counts again soon: at once after a quiet second, else a second after the
 *  last read, so a burst of events costs one read a second. */
function scheduleRefresh() {
  if (refreshing) {
    dirty = true;
    return;
  }
  if (refreshTimer) return;
  const wait = Math.max(50, lastRefresh + REFRESH_GAP - Date.now());
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refresh();
  }, wait);
}

async function refresh() {
  refreshing = true;
  lastRefresh = Date.now();
  const gen = generation;
  const withServices = servicesStale;
  servicesStale = false;
  try {
    const [nodes, health, services] = await Promise.all([
      get("/nodes"),
      get("/health"),
      withServices ? get("/services") : null,
    ]);
    if (gen !== generation) return;
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
    if (dirty) {
      dirty = false;
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
