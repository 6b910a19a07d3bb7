// The manager's API as the page uses it: JSON in and out, the session cookie sent by the
// browser, the session's key on every request, and the API's own error message on refusal.
//
// The key (`X-Cube-CSRF`) is given once, by the sign-in, and kept in this origin's storage:
// the browser sends the cookie to any port of the manager's host (a container's web server on
// the same host gets it too), but only a page of this origin can read the key, and the manager
// honours the cookie only with it.

const KEY = "cube-session-key";
let onUnauthorized = () => {};

/** Keep (or, with null, forget) the session's key. */
export function setSessionKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

/** The headers every request carries: `extra` and the session's key, if any. */
export function sessionHeaders(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...extra, "X-Cube-CSRF": key } : extra;
}

/** Called when the manager answers 401: the session expired or the manager restarted. */
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/** Say that the manager refused the session. */
export function unauthorized() {
  onUnauthorized();
}

/** A refused request, with the API's message (`{"error": "…"}`). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** `method path` with `body` (an object, or JSON text as typed): `{data, headers, status}`. */
export async function api(method, path, body) {
  const headers = sessionHeaders({ Accept: "application/json" });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the manager did not answer (${e.message}); is it running?`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    if (res.status === 401 && !path.startsWith("/ui/")) onUnauthorized();
    const message = data && typeof data === "object" && data.error ? data.error : text || res.statusText;
    throw new ApiError(res.status, message);
  }
  return { data, headers: res.headers, status: res.status };
}

export const get = (path) => api("GET", path).then((r) => r.data);

/** The `next` URL of a `Link` header, if any. */
export function nextLink(headers) {
  const link = headers.get("Link");
  const m = link && /<([^>]+)>\s*;\s*rel="next"/.exec(link);
  return m ? m[1] : null;
}

/** Follow a task's output: calls `onText` with each chunk until `signal` aborts or the
 *  container's output ends; resolves with why it ended. */
export async function followLogs(id, { tail = 500, signal, onText }) {
  const res = await fetch(`/tasks/${encodeURIComponent(id)}/logs?follow=true&tail=${tail}`, {
    credentials: "same-origin",
    headers: sessionHeaders(),
    signal,
  });
  if (res.status === 401) unauthorized();
  if (!res.ok) {
    const text = await res.text();
    let message = text;
    try {
      message = JSON.parse(text).error ?? text;
    } catch {
      // plain text
    }
    throw new ApiError(res.status, message);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
  onText(decoder.decode());
  return "the output ended";
}
