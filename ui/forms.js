// Dialogs that change the cluster: run a task (a form, or its JSON), scale a service, confirm a
// stop or a drain. Each shows the API's own message when the change is refused.

import { api } from "./api.js";
import { $, exactSize, fill, h, parseBytes, toast, words } from "./dom.js";

/** Show `content` (built by `build(close)`) in the page's one dialog; resolves when it closes. */
function openDialog(build) {
  const dialog = $("#dialog");
  return new Promise((resolve) => {
    let result = null;
    const close = (value) => {
      result = value;
      dialog.close();
    };
    dialog.addEventListener("close", () => resolve(result), { once: true });
    fill(dialog, build(close));
    const title = dialog.querySelector("h2");
    if (title) {
      title.id = "dialog-title";
      dialog.setAttribute("aria-labelledby", title.id);
    }
    dialog.showModal();
    dialog.querySelector("[autofocus]")?.focus();
  });
}

/** A form's submit handler: runs `act` with `button` disabled; what it throws (a check of the
 *  form, or the API's refusal) shows in `error`, and the form stays as it is. */
function onSubmit(button, error, act) {
  return async (e) => {
    e.preventDefault();
    error.hidden = true;
    button.disabled = true;
    try {
      await act();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  };
}

/** A form whose submit runs `act`; its error shows in the form and the dialog stays open. */
function actionForm({ title, body, okLabel, danger, act, close }) {
  const error = h("p", { class: "error-text", role: "alert", hidden: true });
  const ok = h("button", { class: `btn ${danger ? "danger" : "primary"}`, type: "submit", text: okLabel });
  const form = h(
    "form",
    {
      method: "dialog",
      on: { submit: onSubmit(ok, error, async () => close(await act())) },
    },
    h("h2", { text: title }),
    body,
    error,
    h(
      "div",
      { class: "foot" },
      h("button", { class: "btn", type: "button", text: "Cancel", on: { click: () => close(null) } }),
      ok,
    ),
  );
  return form;
}

/** Ask before doing something; `act` is what is done (its error keeps the dialog open). */
export function confirmAction({ title, text, okLabel, danger = false, act }) {
  return openDialog((close) =>
    actionForm({ title, body: h("p", { text }), okLabel, danger, act, close }),
  );
}

/** Scale a service: resolves with the service as changed, or null. */
export function scaleDialog(service) {
  const input = h("input", {
    id: "scale-replicas",
    type: "number",
    min: 0,
    max: 10000,
    value: service.replicas,
    required: true,
    autofocus: true,
  });
  return openDialog((close) =>
    actionForm({
      title: `Scale ${service.name}`,
      body: h(
        "div",
        { class: "field" },
        h("label", { for: "scale-replicas", text: "Replicas" }),
        input,
        h("div", { class: "hint", text: `Now ${service.replicas}; ${service.running} running.` }),
      ),
      okLabel: "Scale",
      close,
      act: async () => {
        const replicas = Number(input.value);
        const { data } = await api("PATCH", `/services/${encodeURIComponent(service.name)}`, { replicas });
        toast(`${service.name} scaled to ${replicas}`);
        return data;
      },
    }),
  );
}

/** Drain a node: its tasks move elsewhere (a service's start first). */
export function drainDialog(node) {
  const deadline = h("input", { id: "drain-deadline", type: "number", min: 0, placeholder: "none", autofocus: true });
  return openDialog((close) =>
    actionForm({
      title: `Drain ${node.name}`,
      body: [
        h(
          "p",
          {},
          `${node.tasks} task(s) on ${node.name} will move to other nodes; services start their new copy before stopping the old one. `,
          "Nothing new is placed here until you activate it again.",
        ),
        h(
          "div",
          { class: "field" },
          h("label", { for: "drain-deadline", text: "Deadline (seconds, optional)" }),
          deadline,
          h("div", { class: "hint", text: "Tasks that could not move by then are stopped and placed elsewhere." }),
        ),
      ],
      okLabel: "Drain",
      danger: true,
      close,
      act: async () => {
        const change = { availability: "drain" };
        if (deadline.value !== "") change.deadline_s = Number(deadline.value);
        const { data } = await api("PATCH", `/nodes/${encodeURIComponent(node.name)}`, change);
        toast(`${node.name} is draining`);
        return data;
      },
    }),
  );
}

/** Set a node's availability without questions (activate, pause). */
export async function setAvailability(node, availability) {
  try {
    await api("PATCH", `/nodes/${encodeURIComponent(node.name)}`, { availability });
    toast(`${node.name} is ${availability === "active" ? "active" : "paused"}`);
  } catch (e) {
    toast(e.message, "error");
  }
}

// ---- run a task ----

const EXAMPLE = {
  name: "",
  image: "",
  cmd: [],
  cpu: 0,
  memory: 0,
  restart_policy: "on-failure",
};

/** The fields the form shows; the JSON may hold more, which the form keeps as they are. */
const FORM_FIELDS = ["name", "image", "cmd", "cpu", "memory", "exposed_ports", "env", "restart_policy", "health_check"];

/** The task the form describes, or an Error naming the field that is wrong. */
function taskFromForm(form) {
  const value = (name) => form.elements[name].value.trim();
  const task = {};
  if (value("name")) task.name = value("name");
  task.image = value("image");
  if (!task.image) throw new Error("image: give the image to run, e.g. cube-test/busybox:latest");
  try {
    const cmd = words(value("cmd"));
    if (cmd.length) task.cmd = cmd;
  } catch (e) {
    throw new Error(`command: ${e.message}`);
  }
  if (value("cpu")) {
    const cpu = Number(value("cpu"));
    if (!Number.isFinite(cpu) || cpu < 0) throw new Error(`cpu: ${value("cpu")} is not a number of cores, e.g. 0.5`);
    task.cpu = cpu;
  }
  if (value("memory")) {
    const memory = parseBytes(value("memory"));
    if (!Number.isFinite(memory)) throw new Error(`memory: ${value("memory")} is not a size, e.g. 256M or 1G`);
    task.memory = memory;
  }
  const ports = value("ports").split(/[\s,]+/).filter(Boolean);
  if (ports.length) task.exposed_ports = ports.map((p) => (p.includes("/") ? p : `${p}/tcp`));
  const env = form.elements.env.value.split("\n").map((l) => l.trim()).filter(Boolean);
  if (env.length) task.env = env;
  task.restart_policy = value("restart_policy");
  if (value("health_check")) task.health_check = value("health_check");
  return task;
}

function formFromTask(form, task) {
  const set = (name, v) => {
    form.elements[name].value = v ?? "";
  };
  set("name", task.name);
  set("image", task.image);
  set("cmd", (task.cmd ?? []).map((w) => (/[\s"'\\]/.test(w) || w === "" ? JSON.stringify(w) : w)).join(" "));
  set("cpu", task.cpu ? task.cpu : "");
  set("memory", task.memory ? exactSize(task.memory) : "");
  set("ports", (task.exposed_ports ?? []).join(" "));
  set("env", (task.env ?? []).join("\n"));
  set("restart_policy", task.restart_policy ?? "on-failure");
  set("health_check", task.health_check);
}

function field(label, control, hint) {
  return h("div", { class: "field" }, h("label", { for: control.id, text: label }), control, hint && h("div", { class: "hint", text: hint }));
}

/** The "Run a task" dialog: resolves with the created task, or null. */
export function runTaskDialog(defaults = {}) {
  return openDialog((close) => {
    const error = h("p", { class: "error-text", role: "alert", hidden: true });
    const jsonError = h("p", { class: "error-text small", hidden: true });
    const input = (name, props = {}) => h("input", { id: `run-${name}`, name, autocomplete: "off", ...props });
    const form = h(
      "div",
      { id: "run-form" },
      h(
        "div",
        { class: "row2" },
        field("Image", input("image", { placeholder: "cube-test/busybox:latest", required: true, autofocus: true })),
        field("Name", input("name", { placeholder: "optional" })),
      ),
      field("Command", input("cmd", { placeholder: 'sh -c "echo hello; sleep 3600"' }), "Words as a shell splits them; quotes group."),
      h(
        "div",
        { class: "row2" },
        field("CPU (cores)", input("cpu", { placeholder: "0.5", inputmode: "decimal" })),
        field("Memory", input("memory", { placeholder: "256M" })),
      ),
      h(
        "div",
        { class: "row2" },
        field("Ports", input("ports", { placeholder: "8080/tcp" })),
        field(
          "Restart policy",
          h(
            "select",
            { id: "run-restart_policy", name: "restart_policy" },
            ["on-failure", "always", "never"].map((p) => h("option", { value: p, text: p })),
          ),
        ),
      ),
      field("Health check", input("health_check", { placeholder: "/health (HTTP, on the first port)" })),
      field("Environment", h("textarea", { id: "run-env", name: "env", rows: 2, placeholder: "KEY=value, one a line" })),
    );
    const json = h("textarea", { id: "run-json", rows: 16, spellcheck: "false", "aria-label": "The task as JSON" });
    const jsonPane = h(
      "div",
      { id: "run-json-pane", role: "tabpanel", "aria-labelledby": "run-json-tab", hidden: true },
      json,
      jsonError,
      h("div", { class: "hint", text: "The body of POST /tasks: any field the API takes." }),
    );
    form.setAttribute("role", "tabpanel");
    form.setAttribute("aria-labelledby", "run-form-tab");
    const tab = (id, panel, text, selected) =>
      h("button", { type: "button", role: "tab", id, "aria-controls": panel, "aria-selected": String(selected), tabindex: selected ? 0 : -1, text });
    const formTab = tab("run-form-tab", "run-form", "Form", true);
    const jsonTab = tab("run-json-tab", "run-json-pane", "JSON", false);
    let mode = "form";
    /** The JSON last switched from: its fields the form does not show are kept. */
    let base = {};
    const fromForm = () => {
      const task = { ...base };
      for (const key of FORM_FIELDS) delete task[key];
      return Object.assign(task, taskFromForm(fields));
    };
    const fields = { elements: {} };
    // The form's controls by name, for reading and writing them.
    for (const el of form.querySelectorAll("[name]")) fields.elements[el.name] = el;
    formFromTask(fields, { ...EXAMPLE, ...defaults });

    const show = (next) => {
      error.hidden = true;
      if (next === mode) return;
      if (next === "json") {
        try {
          json.value = JSON.stringify(fromForm(), null, 2);
        } catch (e) {
          error.textContent = `Fix the form first: ${e.message}`;
          error.hidden = false;
          return;
        }
      } else {
        try {
          const parsed = JSON.parse(json.value);
          if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("the task must be a JSON object");
          base = parsed.task && typeof parsed.task === "object" ? parsed.task : parsed;
          formFromTask(fields, base);
        } catch (e) {
          jsonError.textContent = `Fix the JSON first: ${e.message}`;
          jsonError.hidden = false;
          return;
        }
      }
      mode = next;
      form.hidden = mode !== "form";
      jsonPane.hidden = mode !== "json";
      for (const [t, m] of [[formTab, "form"], [jsonTab, "json"]]) {
        t.setAttribute("aria-selected", String(mode === m));
        t.tabIndex = mode === m ? 0 : -1;
      }
    };
    formTab.addEventListener("click", () => show("form"));
    jsonTab.addEventListener("click", () => show("json"));
    // The arrow keys move between the two tabs, as in any tab list.
    for (const t of [formTab, jsonTab]) {
      t.addEventListener("keydown", (e) => {
        if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
        const next = mode === "form" ? "json" : "form";
        show(next);
        (next === "form" ? formTab : jsonTab).focus();
      });
    }
    json.addEventListener("input", () => {
      try {
        JSON.parse(json.value);
        jsonError.hidden = true;
      } catch (e) {
        jsonError.textContent = e.message;
        jsonError.hidden = false;
      }
    });

    const submit = h("button", { class: "btn primary", type: "submit", text: "Run" });
    return h(
      "form",
      {
        id: "run-dialog",
        method: "dialog",
        novalidate: true,
        on: {
          submit: onSubmit(submit, error, async () => {
            const body = mode === "form" ? fromForm() : json.value;
            if (mode === "json") JSON.parse(body);
            const { data } = await api("POST", "/tasks", body);
            toast(`${data.name || data.id} submitted`);
            close(data);
          }),
        },
      },
      h("h2", { text: "Run a task" }),
      h("div", { class: "tabs", role: "tablist" }, formTab, jsonTab),
      form,
      jsonPane,
      error,
      h(
        "div",
        { class: "foot" },
        h("button", { class: "btn", type: "button", text: "Cancel", on: { click: () => close(null) } }),
        submit,
      ),
    );
  });
}

/** The sign-in page: a token for a session. Resolves once signed in. */
export function loginView(main, { onLogin, message }) {
  const token = h("input", {
    id: "login-token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    autofocus: true,
    placeholder: "the API token",
  });
  const error = h("p", { class: "error-text", role: "alert", hidden: !message, text: message ?? "" });
  const button = h("button", { class: "btn primary", type: "submit", text: "Sign in" });
  fill(
    main,
    h(
      "section",
      { class: "panel login" },
      h("h1", { text: "Sign in to Cube" }),
      h(
        "p",
        {},
        "This manager asks for a token. ",
        h("code", { text: "cube up" }),
        " wrote one to ",
        h("code", { text: "~/.config/cube/<host>-<port>.token" }),
        "; a read token gives a read-only view.",
      ),
      h(
        "form",
        {
          id: "login",
          on: {
            submit: onSubmit(button, error, async () => {
              const { data } = await api("POST", "/ui/login", { token: token.value });
              token.value = "";
              onLogin(data);
            }),
          },
        },
        h("div", { class: "field" }, h("label", { for: "login-token", text: "Token" }), token),
        error,
        button,
      ),
    ),
  );
  token.focus();
}
