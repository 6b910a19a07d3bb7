// The pages: overview, tasks, a task, services, a service, nodes. Each draws into `main` and
// returns a function that stops what it started (listeners, a log stream).

import { api, followLogs, get, nextLink } from "./api.js";
import { age, badge, bytes, cores, empty, fill, h, meter, reconcile, shortId, span, toast } from "./dom.js";
import { confirmAction, drainDialog, runTaskDialog, scaleDialog, setAvailability } from "./forms.js";
import { canWrite, on, state } from "./store.js";

const STATES = ["Pending", "Scheduled", "Running", "Completed", "Failed"];
/** Most node cards the overview shows; the Nodes page shows every one. */
const OVERVIEW_NODES = 12;

const taskHref = (id) => `#/tasks/${id}`;
const serviceHref = (name) => `#/services/${encodeURIComponent(name)}`;

function head(title, { crumbs, badges = [], actions = [], sub } = {}) {
  return h(
    "div",
    { class: "page-head" },
    h(
      "div",
      {},
      crumbs && h("div", { class: "crumbs" }, crumbs),
      h("div", { class: "node-head" }, h("h1", { text: title }), badges),
      sub && h("div", { class: "muted small" }, sub),
    ),
    h("div", { class: "actions" }, actions),
  );
}

function stopListening(...offs) {
  return () => offs.forEach((off) => off());
}

// ---- overview ----

export function overview(main) {
  const stats = h("div", { class: "grid stats", id: "stats" });
  const nodes = h("div", { class: "grid cards", id: "node-cards" });
  const services = h("div", { id: "services-panel" });
  const feed = h("ol", { class: "feed", id: "feed" });
  const failing = h("ol", { class: "feed", id: "failing" });
  const subtitle = h("span");
  fill(
    main,
    head("Overview", {
      sub: subtitle,
      actions: canWrite() && h("button", { class: "btn primary", id: "run-task", text: "Run task", on: { click: runAndOpen } }),
    }),
    stats,
    h(
      "div",
      { class: "grid two" },
      h("section", { "aria-label": "Nodes" }, h("h2", { text: "Nodes" }), nodes),
      h(
        "div",
        {},
        h("section", { class: "panel flush section" }, h("h2", { text: "Services" }), services),
        h("section", { class: "panel section" }, h("h2", { text: "Recent failures" }), failing),
        h("section", { class: "panel" }, h("h2", { text: "Recent events" }), feed),
      ),
    ),
  );
  const drawCounts = () => {
    reconcile(
      stats,
      STATES.map((s) => ({ s, n: state.counts[s] ?? 0 })),
      (c) => c.s,
      (c) => statCard(c.s, c.n),
    );
    const total = STATES.reduce((n, s) => n + (state.counts[s] ?? 0), 0);
    const ready = state.nodes.filter((n) => n.status === "Ready").length;
    subtitle.textContent = `${ready} of ${state.nodes.length} node(s) ready · ${total} task(s) · ${state.services.size} service(s)`;
  };
  const drawNodes = () => {
    // Those that need a look first (not Ready, not active), and a dozen at most here.
    const attention = (n) => (n.status !== "Ready" ? 0 : n.availability !== "active" ? 1 : 2);
    const shown = [...state.nodes].sort((a, b) => attention(a) - attention(b) || a.name.localeCompare(b.name)).slice(0, OVERVIEW_NODES);
    drawNodeCards(nodes, shown, state.nodes.length);
    drawCounts();
  };
  const drawServices = () => {
    drawServicesTable(services, [...state.services.values()]);
    drawCounts();
  };
  const drawFeed = () => {
    fill(
      feed,
      state.feed.length
        ? state.feed.slice(0, 12).map(feedItem)
        : h("li", { class: "muted", text: "Changes to tasks, services and nodes appear here as they happen." }),
    );
  };
  drawNodes();
  drawServices();
  drawFeed();
  const stopFailures = recentFailures(failing);
  return stopListening(on("counts", drawCounts), on("nodes", drawNodes), on("service", drawServices), on("feed", drawFeed), stopFailures);
}

/** Most tasks the overview's "Recent failures" lists. */
const FAILURES = 5;

/** The latest Failed tasks with their errors, read once and then kept by the events. */
function recentFailures(list) {
  let failed = null;
  let pending = [];
  const draw = () =>
    fill(
      list,
      failed.length
        ? failed.map((t) =>
            h(
              "li",
              { "data-task": t.id },
              h("a", { href: taskHref(t.id), text: t.name || shortId(t.id) }),
              h("span", { class: "muted small ellipsis", title: t.error ?? "", text: t.error ?? "failed" }),
              age(t.finish_time ?? t.created_at),
            ),
          )
        : h("li", { class: "muted", text: "Nothing has failed lately." }),
    );
  const onTask = (e) => {
    if (pending) {
      pending.push(e);
      return;
    }
    const t = e.object;
    if (!t?.state) return;
    const had = failed.some((f) => f.id === t.id);
    if (t.state === "Failed") failed = [t, ...failed.filter((f) => f.id !== t.id)].slice(0, FAILURES);
    else if (had) failed = failed.filter((f) => f.id !== t.id);
    else return;
    draw();
  };
  get(`/tasks?state=Failed&order=newest&limit=${FAILURES}`)
    .then((tasks) => {
      failed = tasks;
      draw();
      const queued = pending;
      pending = null;
      for (const e of queued) onTask(e);
    })
    .catch(() => {
      pending = null;
      failed = [];
    });
  return on("task", onTask);
}

async function runAndOpen() {
  const task = await runTaskDialog();
  if (task) location.hash = taskHref(task.id);
}

function statCard(s, n) {
  return h(
    "a",
    { class: "panel stat", href: `#/tasks?state=${s}`, "data-count": s },
    h("div", { class: "label" }, badge(s)),
    h("div", { class: "n", text: String(n) }),
  );
}

function noNodes() {
  return empty("No workers yet", "Start one with `cube worker --manager <url>`, or `cube up` for a local cluster.");
}

function feedItem(e) {
  const what =
    e.type === "task"
      ? [h("a", { href: taskHref(e.id), text: e.object?.name || shortId(e.id) }), " ", e.object?.state ? badge(e.object.state, e.object.desired) : e.action]
      : e.type === "service"
        ? [h("a", { href: serviceHref(e.name), text: e.name }), ` ${e.action}`]
        : [h("span", { class: "mono", text: e.name }), ` ${e.action}`];
  return h("li", {}, h("span", { class: "muted small", text: e.type }), what, age(e.time));
}

/** What a node's card shows, for telling whether it must be drawn again: a Ready node's last
 *  heartbeat is not shown. */
const nodeShown = (n) => JSON.stringify({ ...n, last_seen: n.status === "Ready" ? null : n.last_seen });

/** Node cards in `grid`, kept in place when unchanged; a link to all when `total` is more. */
function drawNodeCards(grid, nodes, total = nodes.length) {
  if (!nodes.length) {
    fill(grid, h("div", { class: "panel" }, noNodes()));
    return;
  }
  const more = total > nodes.length ? [{ more: total }] : [];
  reconcile(
    grid,
    [...nodes, ...more],
    (n) => (n.more ? "(all)" : `node:${n.name}`),
    (n) => (n.more ? h("a", { class: "panel stat", href: "#/nodes", text: `All ${n.more} nodes →` }) : nodeCard(n)),
    (n) => (n.more ? String(n.more) : nodeShown(n)),
  );
}

export function nodeCard(node) {
  const labels = Object.entries(node.labels ?? {});
  const write = canWrite();
  const draining = node.availability === "drain";
  return h(
    "article",
    { class: "panel node", "data-node": node.name },
    h(
      "div",
      { class: "node-head" },
      h("h3", { text: node.name }),
      badge(node.status),
      node.availability !== "active" && badge(node.availability),
    ),
    h("div", { class: "muted small mono ellipsis", title: node.address, text: node.address }),
    node.reason && h("div", { class: "error-text small", text: node.reason }),
    h(
      "div",
      { class: "labels" },
      labels.map(([k, v]) => h("span", { class: "chip", text: `${k}=${v}` })),
    ),
    meter("CPU", node.cpu_allocated, node.cpus, (n) => `${cores(n)}`),
    meter("Memory", node.memory_allocated, node.memory, bytes),
    meter("Disk", node.disk_allocated, node.disk, bytes),
    h(
      "div",
      { class: "node-foot" },
      h("a", { href: `#/tasks?worker=${encodeURIComponent(node.name)}`, text: `${node.tasks} task(s)` }),
      node.status !== "Ready" && h("span", { class: "muted small" }, "last seen ", age(node.last_seen)),
      draining && node.drain_deadline && h("span", { class: "muted small" }, "deadline ", age(node.drain_deadline)),
      write &&
        h(
          "div",
          { class: "actions" },
          node.availability === "active"
            ? [
                h("button", { class: "btn small", text: "Pause", title: "Place nothing new here", "data-focus": "pause", on: { click: () => setAvailability(node, "pause") } }),
                h("button", { class: "btn small danger", text: "Drain", "data-focus": "drain", on: { click: () => drainDialog(node) } }),
              ]
            : h("button", { class: "btn small", text: "Activate", "data-focus": "activate", on: { click: () => setAvailability(node, "active") } }),
        ),
    ),
  );
}

/** The services table in `panel`, its rows kept in place when unchanged. */
function drawServicesTable(panel, services) {
  if (!services.length) {
    fill(panel, empty("No services yet", "Run N copies of a task kept at that count: cube service create web --replicas 3 IMAGE"));
    return;
  }
  let body = panel.querySelector("tbody");
  if (!body) {
    body = h("tbody");
    fill(
      panel,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, h("th", { text: "Service" }), h("th", { class: "num", text: "Running" }), h("th", { text: "Rollout" }), canWrite() && h("th", { class: "opt" }))),
          body,
        ),
      ),
    );
  }
  services.sort((a, b) => a.name.localeCompare(b.name));
  reconcile(body, services, (s) => s.name, serviceRow);
}

function serviceRow(s) {
  return h(
    "tr",
    { "data-service": s.name },
    h("td", {}, h("a", { href: serviceHref(s.name), text: s.name }), h("span", { class: "sub", text: `${s.mode} · v${s.version}${s.removing ? " · removing" : ""}` })),
    h("td", { class: "num", text: `${s.running} / ${s.desired}` }),
    h("td", {}, rollout(s)),
    canWrite() && h("td", { class: "opt" }, s.mode === "replicated" && !s.removing && h("button", { class: "btn small", text: "Scale", "data-focus": "scale", on: { click: () => scaleDialog(s) } })),
  );
}

function rollout(s) {
  const r = s.rollout;
  if (!r || r.state === "completed") {
    const steady = s.running >= s.desired;
    return h("span", { class: `badge ${steady ? "running" : "pending"}` }, h("span", { class: "glyph", text: steady ? "✓" : "◷" }), steady ? "Steady" : "Converging");
  }
  const done = Math.min(s.updated ?? 0, s.desired);
  const label = { updating: "Updating", paused: "Paused", rolling_back: "Rolling back", rolled_back: "Rolled back" }[r.state] ?? r.state;
  return h(
    "div",
    { class: "rollout" },
    h("div", { class: "small" }, h("strong", { text: label }), ` v${r.from_version} → v${r.to_version} · ${done}/${s.desired}`),
    h("progress", { max: Math.max(s.desired, 1), value: done }),
    r.message && h("div", { class: "small error-text", text: r.message }),
  );
}

// ---- tasks ----

const PAGE = 50;
/** Most rows the first page grows to as new tasks arrive. */
const MAX_ROWS = 2 * PAGE;
/** Cursors of the pages before this one, for "Previous". */
let pagesBefore = [];
/** A page's cursor: the manager's, from the Link header of the page before it. */
const CURSOR = ["after", "before"];
const firstPage = (params) => CURSOR.every((k) => !params.get(k));
const cursorOf = (params) => Object.fromEntries(CURSOR.map((k) => [k, params.get(k)]));

export function tasks(main, params) {
  const current = new URLSearchParams(params);
  if (firstPage(current)) pagesBefore = [];
  const stateFilter = current.get("state");
  const worker = current.get("worker");
  const service = current.get("service");
  const search = h("input", {
    class: "search",
    type: "search",
    id: "task-search",
    placeholder: "Search name, id or image",
    value: current.get("q") ?? "",
    "aria-label": "Search tasks",
  });
  // Typing searches in place: the address follows without a new history entry, and the
  // field keeps its focus.
  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      const q = search.value.trim();
      if (q) current.set("q", q);
      else current.delete("q");
      for (const k of CURSOR) current.delete(k);
      pagesBefore = [];
      history.replaceState(null, "", `#/tasks${current.size ? `?${current}` : ""}`);
      load();
    }, 250);
  });
  const go = (change) => {
    const next = new URLSearchParams(current);
    for (const [k, v] of Object.entries(change)) {
      if (v === null || v === undefined) next.delete(k);
      else next.set(k, v);
    }
    location.hash = `#/tasks${next.size ? `?${next}` : ""}`;
  };
  const filters = h(
    "div",
    { class: "filters", role: "group", "aria-label": "Filter by state" },
    [null, ...STATES].map((s) =>
      h("button", {
        class: "filter",
        type: "button",
        "aria-pressed": String((stateFilter ?? null) === s),
        "data-filter": s ?? "all",
        text: s ? `${s} ${state.counts[s] ?? 0}` : "All",
        on: { click: () => go({ state: s, after: null, before: null }) },
      }),
    ),
  );
  const body = h("tbody", { id: "task-rows" });
  const pager = h("div", { class: "pager" });
  const scope = [worker && `on ${worker}`, service && `of ${service}`].filter(Boolean).join(" ");
  fill(
    main,
    head("Tasks", {
      sub: scope && h("span", {}, `Tasks ${scope} · `, h("a", { href: "#/tasks", text: "show all" })),
      actions: canWrite() && h("button", { class: "btn primary", id: "run-task", text: "Run task", on: { click: runAndOpen } }),
    }),
    h(
      "section",
      { class: "panel flush" },
      h("div", { class: "toolbar" }, filters, search),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "tasks-table" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { text: "Task" }),
              h("th", { text: "State" }),
              h("th", { class: "opt", text: "Image" }),
              h("th", { text: "Node" }),
              h("th", { class: "opt", text: "Created" }),
              h("th", { class: "num opt", text: "Restarts" }),
              canWrite() && h("th", {}),
            ),
          ),
          body,
        ),
      ),
      pager,
    ),
  );

  let rows = new Map();
  /** Events that came while the page was being read, applied once it is (null: none read). */
  let pending = null;
  let generation = 0;
  const matches = (t) => {
    const q = (current.get("q") ?? "").toLowerCase();
    return (
      (!stateFilter || t.state === stateFilter) &&
      (!worker || t.worker === worker) &&
      (!service || t.service === service) &&
      (!q || [t.name, t.id, t.image].some((f) => String(f ?? "").toLowerCase().includes(q)))
    );
  };
  const show = (t, { first = false } = {}) => {
    const fresh = taskRow(t);
    const old = rows.get(t.id);
    if (old) old.replaceWith(fresh);
    else if (first) body.prepend(fresh);
    else body.append(fresh);
    rows.set(t.id, fresh);
  };
  const onTask = (e) => {
    if (pending) {
      pending.push(e);
      return;
    }
    const row = rows.get(e.id);
    if (row && e.object?.state) {
      show(e.object);
    } else if (row && e.action === "collected") {
      row.classList.add("muted");
      row.querySelector("td")?.append(h("span", { class: "sub", text: "collected" }));
    } else if (!row && e.action === "created" && !e.replayed && firstPage(current) && matches(e.object)) {
      // Newest first: a new task belongs at the top of the first page.
      body.querySelector("tr.none")?.remove();
      show(e.object, { first: true });
      while (body.children.length > MAX_ROWS) {
        rows.delete(body.lastElementChild.dataset.task);
        body.lastElementChild.remove();
      }
    }
  };
  const load = () => {
    const mine = ++generation;
    pending = [];
    const url = new URLSearchParams(current);
    url.set("order", "newest");
    url.set("limit", String(PAGE));
    api("GET", `/tasks?${url}`)
      .then(({ data, headers }) => {
        if (mine !== generation) return;
        rows = new Map();
        fill(body);
        for (const t of data) show(t);
        if (!data.length) {
          const filtered = stateFilter || current.get("q") || worker || service;
          body.append(
            h(
              "tr",
              { class: "none" },
              h(
                "td",
                { colspan: 7 },
                empty(
                  filtered ? "No task matches" : "No tasks yet",
                  filtered ? "Try another state or search." : "Run one with the button above, or `cube run IMAGE`.",
                ),
              ),
            ),
          );
        }
        const next = nextLink(headers);
        const nextCursor = next && cursorOf(new URLSearchParams(next.split("?")[1] ?? ""));
        fill(
          pager,
          h("span", { text: `Page ${pagesBefore.length + 1} · ${data.length} task(s)` }),
          h("span", { class: "spacer" }),
          h("button", {
            class: "btn small",
            text: "Previous",
            disabled: firstPage(current),
            on: { click: () => go(pagesBefore.pop() ?? { after: null, before: null }) },
          }),
          h("button", {
            class: "btn small",
            text: "Next",
            disabled: !next,
            on: {
              click: () => {
                pagesBefore.push(cursorOf(current));
                go(nextCursor);
              },
            },
          }),
        );
        const queued = pending;
        pending = null;
        for (const e of queued) onTask(e);
      })
      .catch((e) => {
        if (mine !== generation) return;
        pending = null;
        // A page that started after a task since collected: start again from the first.
        const restart = e.status === 404 && !firstPage(current) && h("a", { href: "#/tasks", text: " Start from the first page." });
        fill(body, h("tr", {}, h("td", { colspan: 7, class: "error-text" }, e.message, restart)));
      });
  };
  load();
  const offTask = on("task", onTask);
  const offCounts = on("counts", () => {
    for (const button of filters.children) {
      const s = button.dataset.filter;
      if (s !== "all") button.textContent = `${s} ${state.counts[s] ?? 0}`;
    }
  });
  return stopListening(offTask, offCounts, () => {
    clearTimeout(typing);
    generation += 1;
  });
}

function taskRow(t) {
  const active = t.state === "Pending" || t.state === "Scheduled" || t.state === "Running";
  return h(
    "tr",
    { "data-task": t.id },
    h("td", {}, h("a", { href: taskHref(t.id), text: t.name || shortId(t.id) }), h("span", { class: "sub mono", text: shortId(t.id) })),
    h("td", {}, badge(t.state, t.desired), t.error && h("span", { class: "sub ellipsis", title: t.error, text: t.error })),
    h("td", { class: "opt mono ellipsis", title: t.image, text: t.image }),
    h("td", {}, t.worker ? h("a", { href: `#/tasks?worker=${encodeURIComponent(t.worker)}`, text: t.worker }) : h("span", { class: "muted", text: "—" })),
    h("td", { class: "opt" }, age(t.created_at)),
    h("td", { class: "num opt", text: String(t.restart_count ?? 0) }),
    canWrite() && h("td", { class: "num" }, active && !t.service && t.desired !== "stopped" && h("button", { class: "btn small danger", text: "Stop", on: { click: () => stopTask(t) } })),
  );
}

function stopTask(t) {
  return confirmAction({
    title: `Stop ${t.name || shortId(t.id)}?`,
    text: "Its container is stopped and removed; the task ends Completed. A service replaces its own tasks: scale the service instead.",
    okLabel: "Stop task",
    danger: true,
    act: async () => {
      const { data } = await api("DELETE", `/tasks/${t.id}`);
      toast(`Stopping ${t.name || shortId(t.id)}`);
      return data;
    },
  });
}

// ---- one task ----

/** Most characters of output the page keeps; older lines give way. */
const MAX_LOG_CHARS = 512 * 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function task(main, id) {
  if (!UUID.test(id)) {
    fill(
      main,
      head("Task", { crumbs: h("a", { href: "#/tasks", text: "Tasks" }) }),
      h("div", { class: "panel" }, empty(`${id} is not a task id`, "A task's id looks like 0b9e4a52-…; find the task in the list.")),
    );
    return () => {};
  }
  const detail = h("div", { id: "task-detail" }, h("p", { class: "muted", text: "Loading…" }));
  const logs = h("pre", { class: "logs", id: "logs", tabindex: 0, "aria-label": "The task's output" });
  const logState = h("span", { class: "muted" });
  const follow = h("input", { type: "checkbox", id: "logs-follow", checked: true });
  fill(
    main,
    detail,
    h(
      "section",
      { class: "panel flush section" },
      h(
        "div",
        { class: "logs-head" },
        h("h2", { text: "Logs" }),
        h("label", { class: "small", for: "logs-follow" }, follow, " follow"),
        logState,
      ),
      logs,
    ),
  );
  let controller = null;
  let streamedAttempt = null;
  let stopped = false;
  /** Events that came while the task was being read. */
  let pending = [];
  const draw = (t) => {
    if (stopped) return;
    fill(detail, taskDetail(t));
    // A new attempt has a new container: follow its output instead.
    if (t.attempt !== streamedAttempt && (t.container_id || t.state === "Running")) startLogs(t);
  };
  const startLogs = (t) => {
    controller?.abort();
    controller = new AbortController();
    streamedAttempt = t.attempt;
    logs.textContent = "";
    logState.textContent = `attempt ${t.attempt}${t.worker ? ` on ${t.worker}` : ""} · streaming`;
    const signal = controller.signal;
    followLogs(t.id, {
      signal,
      onText: (text) => {
        const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.append(text);
        if (logs.textContent.length > MAX_LOG_CHARS) {
          const kept = logs.textContent.slice(-MAX_LOG_CHARS / 2);
          logs.textContent = kept.slice(kept.indexOf("\n") + 1);
        }
        if (follow.checked && atEnd) logs.scrollTop = logs.scrollHeight;
      },
    })
      .then((why) => {
        if (!signal.aborted) logState.textContent = `attempt ${t.attempt} · ${why}`;
      })
      .catch((e) => {
        if (!signal.aborted) logState.textContent = e.message;
      });
  };
  follow.addEventListener("change", () => {
    if (follow.checked) logs.scrollTop = logs.scrollHeight;
  });
  const onTask = (e) => {
    if (e.id !== id || stopped) return;
    if (pending) pending.push(e);
    else if (e.object?.state) draw(e.object);
    else if (e.action === "collected") fill(detail, h("div", { class: "panel" }, empty("This task was collected", "Finished tasks are removed after the retention period.")));
  };
  get(`/tasks/${id}`)
    .then((t) => {
      if (stopped) return;
      draw(t);
      if (!t.container_id && t.state !== "Running") logState.textContent = "no output yet: the task has not started";
      const queued = pending;
      pending = null;
      for (const e of queued) onTask(e);
    })
    .catch((e) => {
      pending = null;
      if (!stopped) fill(detail, head("Task", { crumbs: h("a", { href: "#/tasks", text: "Tasks" }) }), h("div", { class: "panel" }, h("p", { class: "error-text", text: e.message })));
    });
  const off = on("task", onTask);
  return stopListening(off, () => {
    stopped = true;
    controller?.abort();
  });
}

function taskDetail(t) {
  const active = ["Pending", "Scheduled", "Running"].includes(t.state);
  const rows = [
    ["ID", h("span", { class: "mono", text: t.id })],
    ["Image", h("span", { class: "mono", text: t.image })],
    ["Command", t.cmd?.length ? h("code", { text: t.cmd.join(" ") }) : h("span", { class: "muted", text: "the image's" })],
    ["Node", t.worker ? h("a", { href: `#/tasks?worker=${encodeURIComponent(t.worker)}`, text: t.worker }) : "—"],
    t.service && ["Service", h("span", {}, h("a", { href: serviceHref(t.service), text: t.service }), ` · slot ${t.slot} · v${t.version}`)],
    ["Created", age(t.created_at)],
    ["Started", age(t.start_time)],
    t.finish_time && ["Finished", age(t.finish_time)],
    t.exit_code !== null && t.exit_code !== undefined && ["Exit code", h("span", { class: "mono", text: String(t.exit_code) })],
    t.error && ["Error", h("span", { class: "error-text", text: t.error })],
    ["Restarts", `${t.restart_count} of ${t.max_restarts} (${t.restart_policy})`],
    ["Resources", `${t.cpu ? `${cores(t.cpu)} CPU` : "no CPU reserved"} · ${t.memory ? bytes(t.memory) : "no memory limit"}${t.disk ? ` · ${bytes(t.disk)} disk` : ""}`],
    t.exposed_ports?.length && [
      "Ports",
      h(
        "span",
        {},
        t.exposed_ports.map((p) => h("span", { class: "chip", text: t.host_ports?.[p] ? `${p} → ${t.host_ports[p]}` : p })),
      ),
    ],
    t.health_check && ["Health check", h("code", { text: t.health_check })],
    t.constraints?.length && ["Constraints", h("span", {}, t.constraints.map((c) => h("span", { class: "chip", text: c })))],
    t.volumes?.length && ["Volumes", h("span", {}, t.volumes.map((v) => h("span", { class: "chip", text: `${v.source ?? v.name ?? ""}:${v.target ?? ""}` })))],
    t.env?.length && ["Environment", h("span", {}, t.env.map((e) => h("span", { class: "chip", text: e })))],
    t.container_id && ["Container", h("span", { class: "mono", text: t.container_id.slice(0, 12) })],
  ].filter(Boolean);
  return [
    head(t.name || shortId(t.id), {
      crumbs: h("span", {}, h("a", { href: "#/tasks", text: "Tasks" }), " / ", shortId(t.id)),
      badges: [badge(t.state, t.desired), h("span", { class: "muted small", text: `attempt ${t.attempt}` })],
      actions:
        canWrite() &&
        active &&
        !t.service &&
        t.desired !== "stopped" &&
        h("button", { class: "btn danger", id: "stop-task", text: "Stop", on: { click: () => stopTask(t) } }),
    }),
    h(
      "div",
      { class: "grid two section" },
      h("section", { class: "panel" }, h("h2", { text: "Details" }), h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]))),
      h("section", { class: "panel flush" }, h("h2", { text: "Attempts" }), attempts(t)),
    ),
  ];
}

/** The current attempt and the earlier ones the manager kept, newest first. */
function attempts(t) {
  const earlier = [...(t.attempts ?? [])].reverse();
  const current = {
    attempt: t.attempt,
    worker: t.worker,
    state: t.state,
    start_time: t.start_time,
    finish_time: t.finish_time,
    exit_code: t.exit_code,
    error: t.error,
    current: true,
  };
  const all = t.attempt > 0 ? [current, ...earlier] : earlier;
  if (!all.length) return empty("Not placed yet", t.error ?? "It waits for a node with room.");
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { id: "attempts" },
      h("thead", {}, h("tr", {}, h("th", { text: "#" }), h("th", { text: "Node" }), h("th", { text: "State" }), h("th", { text: "Ran" }), h("th", { text: "Exit" }))),
      h(
        "tbody",
        {},
        all.map((a) => {
          const ran =
            a.start_time && (a.finish_time || a.ended_at)
              ? span(Date.parse(a.finish_time || a.ended_at) - Date.parse(a.start_time), true)
              : a.start_time
                ? `since ${new Date(a.start_time).toLocaleTimeString()}`
                : "—";
          return h(
            "tr",
            { "data-attempt": a.attempt },
            h("td", { text: String(a.attempt) }),
            h("td", { text: a.worker ?? "—" }),
            h("td", {}, a.current ? badge(a.state, t.desired) : badge(a.state), a.error && h("span", { class: "sub", text: a.error })),
            h("td", { class: "small" }, ran, a.start_time && h("span", { class: "sub" }, "started ", age(a.start_time))),
            h("td", { class: "mono", text: a.exit_code ?? "—" }),
          );
        }),
      ),
    ),
  );
}

// ---- services ----

export function services(main) {
  const panel = h("section", { class: "panel flush" });
  fill(main, head("Services", { sub: "N copies of a task, kept at that count and replaced a few at a time when it changes." }), panel);
  const draw = () => drawServicesTable(panel, [...state.services.values()]);
  draw();
  return on("service", draw);
}

export function service(main, name) {
  const top = h("div");
  const taskBody = h("tbody", { id: "service-tasks" });
  fill(
    main,
    top,
    h(
      "section",
      { class: "panel flush" },
      h("h2", { text: "Tasks" }),
      h(
        "div",
        { class: "table-wrap" },
        h("table", {}, h("thead", {}, h("tr", {}, h("th", { text: "Task" }), h("th", { text: "State" }), h("th", { class: "opt", text: "Image" }), h("th", { text: "Node" }), h("th", { class: "opt", text: "Created" }), h("th", { class: "num opt", text: "Restarts" }), canWrite() && h("th", {}))), taskBody),
      ),
    ),
  );
  const draw = () => {
    const s = state.services.get(name);
    if (!s) {
      fill(top, head(name, { crumbs: h("a", { href: "#/services", text: "Services" }) }), h("div", { class: "panel section" }, empty("No such service", "It may have been removed.")));
      return;
    }
    const write = canWrite() && !s.removing;
    fill(
      top,
      head(s.name, {
        crumbs: h("a", { href: "#/services", text: "Services" }),
        badges: [h("span", { class: "badge", text: s.mode }), s.removing && h("span", { class: "badge failed", text: "removing" })],
        actions: write && [
          s.mode === "replicated" && h("button", { class: "btn", id: "scale", text: "Scale", on: { click: () => scaleDialog(s) } }),
          s.previous_version && h("button", { class: "btn", text: "Roll back", on: { click: () => rollback(s) } }),
          h("button", { class: "btn danger", text: "Remove", on: { click: () => removeService(s) } }),
        ],
      }),
      h(
        "div",
        { class: "grid two section" },
        h(
          "section",
          { class: "panel" },
          h("h2", { text: "Status" }),
          h(
            "dl",
            { class: "kv" },
            h("dt", { text: "Running" }),
            h("dd", { text: `${s.running} of ${s.desired} (${s.running_current} on v${s.version})` }),
            h("dt", { text: "Image" }),
            h("dd", { class: "mono", text: s.task.image }),
            s.task.cmd?.length && [h("dt", { text: "Command" }), h("dd", {}, h("code", { text: s.task.cmd.join(" ") }))],
            h("dt", { text: "Rollout" }),
            h("dd", {}, rollout(s)),
            h("dt", { text: "Updates" }),
            h("dd", { text: `${s.update.parallelism || "all"} at a time, ${s.update.order}, on failure ${s.update.failure_action}` }),
            h("dt", { text: "Changed" }),
            h("dd", {}, age(s.updated_at)),
          ),
        ),
        h(
          "section",
          { class: "panel flush" },
          h("h2", { text: "Versions" }),
          h(
            "table",
            {},
            h("thead", {}, h("tr", {}, h("th", { text: "Version" }), h("th", { class: "num", text: "Tasks" }), h("th", { class: "num", text: "Running" }))),
            h("tbody", {}, (s.versions ?? []).map((v) => h("tr", {}, h("td", { text: `v${v.version}${v.version === s.version ? " (current)" : ""}` }), h("td", { class: "num", text: String(v.tasks) }), h("td", { class: "num", text: String(v.running) })))),
          ),
        ),
      ),
    );
  };
  draw();
  const rows = new Map();
  const showTask = (t) => {
    const fresh = taskRow(t);
    const old = rows.get(t.id);
    if (old) old.replaceWith(fresh);
    else taskBody.prepend(fresh);
    rows.set(t.id, fresh);
  };
  /** Events that came while the tasks were being read. */
  let pending = [];
  let stopped = false;
  const onTask = (e) => {
    if (stopped || e.object?.service !== name || !e.object.state) return;
    if (pending) pending.push(e);
    else showTask(e.object);
  };
  api("GET", `/tasks?service=${encodeURIComponent(name)}&order=newest&limit=${MAX_ROWS}`)
    .then(({ data }) => {
      if (stopped) return;
      // Oldest first, each on top: the newest ends first.
      for (const t of [...data].reverse()) showTask(t);
      const queued = pending;
      pending = null;
      for (const e of queued) onTask(e);
    })
    .catch((e) => {
      pending = null;
      fill(taskBody, h("tr", {}, h("td", { colspan: 7, class: "error-text", text: e.message })));
    });
  return stopListening(on("service", draw), on("task", onTask), () => {
    stopped = true;
  });
}

function rollback(s) {
  return confirmAction({
    title: `Roll ${s.name} back?`,
    text: `Version ${s.previous_version}'s template becomes current again and replaces v${s.version}'s tasks the way updates do.`,
    okLabel: "Roll back",
    act: () => api("POST", `/services/${encodeURIComponent(s.name)}/rollback`),
  });
}

function removeService(s) {
  return confirmAction({
    title: `Remove ${s.name}?`,
    text: `Its ${s.running} running task(s) are stopped, then the service is gone.`,
    okLabel: "Remove",
    danger: true,
    act: async () => {
      await api("DELETE", `/services/${encodeURIComponent(s.name)}`);
      location.hash = "#/services";
    },
  });
}

// ---- nodes ----

export function nodes(main) {
  const grid = h("div", { class: "grid cards", id: "node-cards" });
  fill(main, head("Nodes", { sub: "Workers, what they hold and what is placed on them." }), grid);
  const draw = () => drawNodeCards(grid, state.nodes);
  draw();
  return on("nodes", draw);
}

export { runAndOpen };
