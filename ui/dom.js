// Building the page: elements from data (never HTML from strings, so nothing a task holds can
// run as markup), and the formats people read at a glance.

/** An element: `h("a", {href, class, on: {click}}, child, …)`; children may be text, elements,
 *  arrays of them, or null/false (skipped). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [type, fn] of Object.entries(value)) el.addEventListener(type, fn);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "text") {
      el.textContent = value;
    } else if (key === "value") {
      el.value = value;
    } else if (key === "hidden" || key === "disabled" || key === "checked" || key === "required") {
      el[key] = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace what `el` holds with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// ---- formats ----

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 1536 → "1.5 KiB". */
export function bytes(n) {
  if (!Number.isFinite(n) || n <= 0) return "0 B";
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${UNITS[i]}`;
}

/** "256M", "1.5g", "512MiB", "1048576" → bytes; NaN when it is not a size. */
export function parseBytes(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(text ?? "");
  if (!m) return NaN;
  const power = { "": 0, k: 1, m: 2, g: 3, t: 4 }[m[2].toLowerCase()];
  const n = Math.round(Number(m[1]) * 1024 ** power);
  // Less than a byte is not a size (and 0 would mean no limit at all).
  return n === 0 && Number(m[1]) > 0 ? NaN : n;
}

/** Bytes as the shortest exact size parseBytes reads back: 268435456 → "256M". */
export function exactSize(n) {
  for (const [unit, size] of [["T", 1024 ** 4], ["G", 1024 ** 3], ["M", 1024 ** 2], ["K", 1024]]) {
    if (n >= size && n % size === 0) return `${n / size}${unit}`;
  }
  return String(n);
}

/** Cores: 0.5 → "0.5", 4 → "4". */
export function cores(n) {
  return Number.isInteger(n) ? String(n) : n.toFixed(2).replace(/0+$/, "").replace(/\.$/, "");
}

/** How long ago (or until) `iso` is, from `now` (ms): "12 s ago", "5 min ago", "in 3 h". */
export function ago(iso, now = Date.now()) {
  if (!iso) return "—";
  const ms = now - Date.parse(iso);
  if (!Number.isFinite(ms)) return "—";
  const text = span(Math.abs(ms));
  if (text === null) return "just now";
  return ms >= 0 ? `${text} ago` : `in ${text}`;
}

/** A span of time: "850 ms", "12 s", "5 min", "3 h 20 min", "2 d". Null under a second when
 *  `exact` is not asked for. */
export function span(ms, exact = false) {
  if (ms < 1000) return exact ? `${Math.round(ms)} ms` : null;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return `${min} min`;
  const hours = Math.floor(min / 60);
  if (hours < 24) return min % 60 ? `${hours} h ${min % 60} min` : `${hours} h`;
  return `${Math.floor(hours / 24)} d`;
}

/** A `<time>` that keeps saying how long ago it was (see `tickAges`). */
export function age(iso) {
  if (!iso) return h("span", { class: "muted", text: "—" });
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString(), "data-ago": "" }, ago(iso));
}

/** Refresh every age on the page: a clock, not a poll (nothing is fetched). */
export function tickAges(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll("time[data-ago]")) el.textContent = ago(el.dateTime, now);
}

export const shortId = (id) => String(id).slice(0, 8);

// ---- state ----

const GLYPHS = {
  Pending: "◷",
  Scheduled: "➜",
  Running: "●",
  Completed: "✓",
  Failed: "✕",
  Ready: "●",
  Down: "✕",
  Unknown: "?",
  active: "●",
  pause: "❚❚",
  drain: "⇣",
};

/** How a state reads, where its name is not a word (a node's availability). */
const WORDS = { active: "Active", pause: "Paused", drain: "Draining" };

/** A state as a badge: colour, glyph and word. A running task asked to stop says so. */
export function badge(state, desired) {
  const stopping = desired === "stopped" && (state === "Running" || state === "Scheduled");
  const word = stopping ? "Stopping" : WORDS[state] ?? state;
  return h(
    "span",
    { class: `badge ${stopping ? "stopping" : String(state).toLowerCase()}`, "data-state": state },
    h("span", { class: "glyph", "aria-hidden": "true", text: stopping ? "◌" : GLYPHS[state] ?? "•" }),
    word,
  );
}

/** `used` of `total` as a labelled bar; amber past 80 %, red when full. */
export function meter(label, used, total, format) {
  const ratio = total > 0 ? Math.min(used / total, 1) : 0;
  const level = ratio >= 1 ? "full" : ratio >= 0.8 ? "high" : "";
  const fill = h("div", { class: "fill" });
  fill.style.width = `${(ratio * 100).toFixed(1)}%`;
  return h(
    "div",
    total > 0
      ? {
          class: `meter ${level}`,
          role: "meter",
          "aria-label": label,
          "aria-valuemin": 0,
          "aria-valuemax": total,
          "aria-valuenow": Math.min(used, total),
        }
      : { class: "meter" },
    h(
      "div",
      { class: "row" },
      h("span", { text: label }),
      h("span", { text: total > 0 ? `${format(used)} / ${format(total)}` : `${format(used)} / no limit` }),
    ),
    h("div", { class: "track" }, fill),
  );
}

/** An empty state: what is (not) here, and what to do next. */
export function empty(title, hint, action) {
  return h("div", { class: "empty" }, h("strong", { text: title }), hint && h("div", { text: hint }), action);
}

/** A short message in the corner; errors stay longer. */
export function toast(message, kind = "ok") {
  const box = $("#toasts");
  if (!box) return;
  // The box is a live region: the message is announced once, by it.
  const el = h("div", { class: `toast ${kind}`, text: message });
  box.append(el);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 3500);
}

/** Split a command line as a shell would for words and quotes: `sh -c "echo hi"` → 3 words. */
export function words(line) {
  const out = [];
  let word = null;
  let quote = null;
  for (let i = 0; i < line.length; i += 1) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < line.length) word += line[++i];
      else word += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      word ??= "";
    } else if (/\s/.test(c)) {
      if (word !== null) out.push(word);
      word = null;
    } else if (c === "\\" && i + 1 < line.length) {
      word = (word ?? "") + line[++i];
    } else {
      word = (word ?? "") + c;
    }
  }
  if (quote) throw new Error(`the command has an unclosed ${quote}`);
  if (word !== null) out.push(word);
  return out;
}

/** Make `container` hold `items` rendered, in order, keyed by `keyOf`. An item whose `sig`
 *  (what its rendering shows) is unchanged keeps its element, and with it focus, scroll and
 *  anything the user was doing there; a changed one is rendered anew, and focus inside the old
 *  element moves to the new one's element with the same `data-focus`. So a redraw once a second
 *  neither flickers nor takes a keyboard user's place away. */
const signatures = new WeakMap();

export function reconcile(container, items, keyOf, render, sig = (item) => JSON.stringify(item)) {
  const old = new Map();
  for (const el of container.children) if (el.dataset.key) old.set(el.dataset.key, el);
  const active = document.activeElement;
  const focused = active && container.contains(active) ? [...old.values()].find((el) => el.contains(active)) : null;
  const next = items.map((item) => {
    const key = String(keyOf(item));
    const signature = sig(item);
    const el = old.get(key);
    if (el && signatures.get(el) === signature) return el;
    const fresh = render(item);
    fresh.dataset.key = key;
    signatures.set(fresh, signature);
    return fresh;
  });
  // Keep elements that stay where they are: moving a focused element would blur it.
  const same = next.length === container.children.length && next.every((el, i) => container.children[i] === el);
  if (!same) container.replaceChildren(...next);
  if (focused && !focused.isConnected) {
    const name = active.dataset.focus;
    const counterpart = next.find((el) => el.dataset.key === focused.dataset.key);
    (name && counterpart?.querySelector(`[data-focus="${name}"]`))?.focus();
  } else if (focused && document.activeElement !== active) {
    active.focus();
  }
}
