// Corral's chat page: plain DOM code over the gateway's Ollama API. Everything the page
// keeps (settings, the conversation) lives in this browser; the server stores nothing.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, { dataset = {}, ...props } = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
};

// ---- settings (localStorage) and the API ----

const SETTINGS_KEY = "corral.settings";
const settings = Object.assign(
  { key: "", system: "", temperature: "", num_predict: "", num_ctx: "", think: false, model: "" },
  JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}"),
);
const saveSettings = () => localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));

function banner(text) {
  $("#banner").textContent = text || "";
  $("#banner").hidden = !text;
}

// Relative to /ui/, so the page also works behind a reverse proxy's path prefix.
async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (settings.key) headers.Authorization = `Bearer ${settings.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(`../${path}`, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 401) throw new Error("The server wants an API key: enter it under Settings.");
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      message = (await resp.json()).error || message;
    } catch {}
    throw new Error(message);
  }
  return resp;
}

// Ollama streams newline-delimited JSON; an error mid-stream arrives as {"error": ...}.
async function* ndjson(resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield parseEvent(line);
    }
  }
  if (buffer.trim()) yield parseEvent(buffer);
}

function parseEvent(line) {
  const event = JSON.parse(line);
  if (event.error) throw new Error(event.error);
  return event;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log10(n) / 3));
  return `${(n / 1000 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---- tabs ----

const TABS = ["chat", "models", "running", "settings"];
function showTab() {
  const tab = TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "chat";
  for (const t of TABS) $(`#${t}`).hidden = t !== tab;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.hash === `#${tab}`);
  if (tab === "models" || tab === "chat") loadModels().catch((e) => banner(e.message));
  if (tab === "running") loadRunning().catch((e) => banner(e.message));
}

// ---- models ----

async function loadModels() {
  const { models } = await (await api("api/tags")).json();
  const select = $("#model");
  const current = select.value || settings.model;
  select.replaceChildren(...models.map((m) => el("option", { value: m.name, textContent: m.name })));
  if (models.some((m) => m.name === current)) select.value = current;
  $("#send").disabled = !models.length;
  if (!models.length) select.append(el("option", { value: "", textContent: "no models: pull one under Models" }));

  const rows = models.map((m) => {
    const d = m.details || {};
    const copy = el("button", { type: "button", textContent: "Copy", className: "copy-model" });
    const del = el("button", { type: "button", textContent: "Delete", className: "delete-model danger" });
    copy.onclick = () => copyModel(m.name);
    del.onclick = () => deleteModel(m.name);
    const cells = [m.name, bytes(m.size), d.family || "", d.parameter_size || "", d.quantization_level || "", new Date(m.modified_at).toLocaleString()];
    return el("tr", { dataset: { model: m.name } }, ...cells.map((c) => el("td", { textContent: c })), el("td", {}, copy, del));
  });
  $("#model-table tbody").replaceChildren(...rows);
}

async function copyModel(source) {
  const destination = prompt(`Copy ${source} to:`, `${source.split(":")[0]}-copy`);
  if (!destination) return;
  await guarded(api("api/copy", { method: "POST", body: { source, destination } }));
  await loadModels();
}

async function deleteModel(model) {
  if (!confirm(`Delete ${model}?`)) return;
  await guarded(api("api/delete", { method: "DELETE", body: { model } }));
  await loadModels();
}

async function guarded(promise) {
  try {
    const result = await promise;
    banner("");
    return result;
  } catch (e) {
    banner(e.message);
  }
}

let pulling = null;
async function pull(event) {
  event.preventDefault();
  const model = $("#pull-name").value.trim();
  const progress = $("#pull-progress");
  const layers = new Map(); // digest -> [completed, total]: the bar sums every layer
  pulling = new AbortController();
  $("#pull-status").hidden = false;
  $("#pull").disabled = true;
  $("#pull-cancel").hidden = false;
  progress.value = 0;
  try {
    const resp = await api("api/pull", { method: "POST", body: { model, insecure: $("#pull-insecure").checked }, signal: pulling.signal });
    for await (const e of ndjson(resp)) {
      let text = e.status;
      if (e.digest && e.total) {
        layers.set(e.digest, [e.completed || 0, e.total]);
        let done = 0;
        let total = 0;
        for (const [c, t] of layers.values()) (done += c), (total += t);
        progress.value = done / total;
        text += ` — ${bytes(done)} / ${bytes(total)}`;
      }
      if (e.status === "success") progress.value = 1;
      $("#pull-text").textContent = text;
    }
    banner("");
  } catch (e) {
    $("#pull-text").textContent = e.name === "AbortError" ? "cancelled" : `failed: ${e.message}`;
  } finally {
    pulling = null;
    $("#pull").disabled = false;
    $("#pull-cancel").hidden = true;
    loadModels().catch((e) => banner(e.message));
  }
}

// ---- running models ----

async function loadRunning() {
  const { models } = await (await api("api/ps")).json();
  const rows = models.map((m) => {
    const unload = el("button", { type: "button", textContent: "Unload" });
    unload.onclick = async () => {
      await guarded(api("api/generate", { method: "POST", body: { model: m.name, keep_alive: 0 } }));
      setTimeout(() => loadRunning().catch((e) => banner(e.message)), 300);
    };
    const gpu = m.size ? `${Math.round((100 * m.size_vram) / m.size)}%` : "";
    const cells = [m.name, bytes(m.size), gpu, String(m.context_length || ""), new Date(m.expires_at).toLocaleString()];
    return el("tr", { dataset: { model: m.name } }, ...cells.map((c) => el("td", { textContent: c })), el("td", {}, unload));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 6, className: "muted", textContent: "No model is loaded." })));
  $("#ps-table tbody").replaceChildren(...rows);
}

// ---- chat ----

let history = []; // {role, content} as sent to /api/chat
let generating = null;

function addMessage(role, text) {
  const body = el("div", { className: "body" });
  const node = el("div", { className: `msg ${role}` }, el("div", { className: "role", textContent: role }), body);
  if (role === "user") body.textContent = text;
  $("#messages").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function options() {
  const out = {};
  for (const key of ["temperature", "num_predict", "num_ctx"]) {
    if (settings[key] !== "" && !Number.isNaN(Number(settings[key]))) out[key] = Number(settings[key]);
  }
  return out;
}

async function send(event) {
  event.preventDefault();
  const text = $("#prompt").value.trim();
  const model = $("#model").value;
  if (!text || !model || generating) return;
  $("#prompt").value = "";
  addMessage("user", text);
  history.push({ role: "user", content: text });

  const node = addMessage("assistant");
  node.dataset.state = "streaming";
  const thinking = el("details", { className: "thinking", open: true, hidden: true }, el("summary", { textContent: "Thinking" }));
  const thought = el("div", { className: "thought" });
  thinking.append(thought);
  const content = el("div", { className: "content" });
  const stats = el("div", { className: "stats muted" });
  node.querySelector(".body").append(thinking, content, stats);

  const messages = settings.system ? [{ role: "system", content: settings.system }, ...history] : [...history];
  const body = { model, messages, stream: true, options: options() };
  if (settings.think) body.think = true;
  let answer = "";
  let reasoning = "";
  let frame = 0;
  const paint = () => {
    frame = 0;
    content.innerHTML = Markdown.render(answer);
    thought.textContent = reasoning;
    thinking.hidden = !reasoning;
    node.scrollIntoView({ block: "end" });
  };
  generating = new AbortController();
  $("#send").hidden = true;
  $("#stop").hidden = false;
  try {
    const resp = await api("api/chat", { method: "POST", body, signal: generating.signal });
    for await (const e of ndjson(resp)) {
      answer += e.message?.content || "";
      reasoning += e.message?.thinking || "";
      frame ||= requestAnimationFrame(paint);
      if (e.done) {
        const rate = e.eval_duration ? (e.eval_count / (e.eval_duration / 1e9)).toFixed(1) : "?";
        stats.textContent = `${e.eval_count ?? 0} tokens, ${rate} tokens/s, ${e.done_reason || "stop"}`;
      }
    }
    node.dataset.state = "done";
    banner("");
  } catch (e) {
    node.dataset.state = e.name === "AbortError" ? "stopped" : "error";
    stats.textContent = e.name === "AbortError" ? "stopped" : `error: ${e.message}`;
  } finally {
    cancelAnimationFrame(frame);
    paint();
    if (reasoning) thinking.open = false;
    history.push({ role: "assistant", content: answer });
    generating = null;
    $("#send").hidden = false;
    $("#stop").hidden = true;
  }
}

// ---- wiring ----

function bindSettings() {
  for (const key of ["key", "system", "temperature", "num_predict", "num_ctx", "think"]) {
    const input = $(`#set-${key}`);
    const prop = input.type === "checkbox" ? "checked" : "value";
    input[prop] = settings[key];
    input.addEventListener("input", () => {
      settings[key] = input[prop];
      saveSettings();
      $("#settings-saved").textContent = "Saved in this browser.";
    });
  }
}

window.addEventListener("DOMContentLoaded", () => {
  bindSettings();
  window.addEventListener("hashchange", showTab);
  $("#composer").addEventListener("submit", send);
  $("#prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
  });
  $("#stop").addEventListener("click", () => generating?.abort());
  $("#new-chat").addEventListener("click", () => {
    generating?.abort();
    history = [];
    $("#messages").replaceChildren();
  });
  $("#model").addEventListener("change", () => {
    settings.model = $("#model").value;
    saveSettings();
  });
  $("#pull-form").addEventListener("submit", pull);
  $("#pull-cancel").addEventListener("click", () => pulling?.abort());
  $("#refresh-ps").addEventListener("click", () => loadRunning().catch((e) => banner(e.message)));
  $("#messages").addEventListener("click", (e) => {
    if (e.target.classList.contains("copy-code")) navigator.clipboard?.writeText(e.target.closest(".code").querySelector("code").textContent);
  });
  api("api/version")
    .then((r) => r.json())
    .then((v) => ($("#version").textContent = `Ollama API ${v.version}`))
    .catch(() => {});
  showTab();
});
