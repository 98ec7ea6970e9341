// NanoPhi's chat page: plain JavaScript, talks to this server's /v1 API with streaming.
"use strict";

const $ = (id) => document.getElementById(id);
const CHAT_TAGS = ["Chat", "Roleplay"];  // these keep a conversation; other tags are one-shot prompts
const HINTS = {
  Chat: "A conversation: earlier turns are sent as context.",
  Roleplay: "A conversation in roleplay format.",
  Textbook: "Continues a textbook passage from your text.",
  Code: "Continues code, e.g. a function signature and docstring.",
  Math: "Asks for the answer to a math question.",
  Logic: "Asks for the answer to a reasoning question.",
  Excerpt: "Paste a passage; the model writes a response to it.",
};

let history = [];        // {tag, role: 'user'|'assistant', content}
let controller = null;   // AbortController of the request in flight
let server = {};         // /health

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function addMessage(role, tag, text) {
  $("empty").hidden = true;
  const box = el("div", `msg ${role} ${tag.toLowerCase()}`);
  box.append(el("span", "who", role === "user" ? `You · ${tag}` : role === "assistant" ? `Model · ${tag}` : "Error"));
  const body = el("span", "text", text);
  box.append(body);
  $("history").append(box);
  box.scrollIntoView({block: "end"});
  return box;
}

function settings() {
  const num = (id) => Number($(id).value);
  const s = {
    temperature: num("temperature"),
    top_k: Math.max(0, Math.round(num("top_k"))),
    top_p: num("top_p"),
    max_tokens: Math.max(1, Math.round(num("max_tokens"))),
    repetition_penalty: num("repetition_penalty"),
  };
  if ($("seed").value !== "") s.seed = Math.round(num("seed"));
  return s;
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

function requestFor(tag, text) {
  const body = {model: server.model, stream: true, stream_options: {include_usage: true}, tag, ...settings()};
  const system = $("system").value.trim();
  if (CHAT_TAGS.includes(tag)) {
    const messages = [];
    if (system) messages.push({role: "system", content: system});
    for (const m of history) if (m.tag === tag) messages.push({role: m.role, content: m.content});
    messages.push({role: "user", content: text});
    return ["/v1/chat/completions", {...body, messages, trim_history: true}];
  }
  return ["/v1/completions", {...body, prompt: text}];
}

// Reads a server-sent event stream, calling onEvent with each parsed "data:" JSON object.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of chunk.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function busy(on) {
  $("send").disabled = on;
  $("stop").hidden = !on;
  $("clear").disabled = on;
}

async function send(text) {
  const tag = $("tag").value;
  const [path, body] = requestFor(tag, text);
  addMessage("user", tag, text);
  const box = addMessage("assistant", tag, "");
  box.classList.add("streaming");
  const out = box.querySelector(".text");
  let reply = "", finish = null, usage = null;
  const t0 = performance.now();
  controller = new AbortController();
  busy(true);
  try {
    const response = await fetch(path, {method: "POST", headers: headers(), body: JSON.stringify(body),
                                        signal: controller.signal});
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      if (response.status === 401) $("key-row").hidden = false;
      throw new Error(message);
    }
    const dropped = response.headers.get("X-NanoPhi-Dropped-Turns");
    await readEvents(response, (ev) => {
      if (ev.error) throw new Error(ev.error.message);
      if (ev.usage) usage = ev.usage;
      for (const c of ev.choices || []) {
        const piece = c.delta ? c.delta.content : c.text;
        if (piece) { reply += piece; out.textContent = reply; box.scrollIntoView({block: "end"}); }
        if (c.finish_reason) finish = c.finish_reason;
      }
    });
    const secs = (performance.now() - t0) / 1000;
    const parts = [];
    if (usage) parts.push(`${usage.completion_tokens} tokens`, `${(usage.completion_tokens / secs).toFixed(1)} tok/s`);
    parts.push(`${secs.toFixed(2)} s`, `finish: ${finish}`);
    if (dropped) parts.push(`${dropped} old turns left out to fit the context`);
    box.append(el("span", "meta", parts.join(" · ")));
    history.push({tag, role: "user", content: text}, {tag, role: "assistant", content: reply});
  } catch (err) {
    if (err.name === "AbortError") {
      box.append(el("span", "meta", "stopped"));
      if (reply) history.push({tag, role: "user", content: text}, {tag, role: "assistant", content: reply});
    } else {
      box.remove();
      addMessage("error", tag, err.message);
    }
  } finally {
    box.classList.remove("streaming");
    controller = null;
    busy(false);
  }
}

function clearAll() {
  history = [];
  for (const m of document.querySelectorAll("#history .msg")) m.remove();
  $("empty").hidden = false;
}

function showValue(id) {
  const update = () => { $(`${id}-out`).textContent = Number($(id).value).toFixed(2); };
  $(id).addEventListener("input", update);
  update();
}

function tagChanged() {
  const tag = $("tag").value;
  $("tag-hint").textContent = HINTS[tag] || "";
  $("system-row").hidden = !CHAT_TAGS.includes(tag);
}

async function init() {
  // a phone's screen is for the conversation: settings start folded (tap "Settings" to open them)
  if (window.matchMedia("(max-width: 720px)").matches) $("settings-panel").open = false;
  for (const id of ["temperature", "top_p", "repetition_penalty"]) showValue(id);
  $("tag").addEventListener("change", tagChanged);
  tagChanged();
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("clear").addEventListener("click", clearAll);
  $("api_key").addEventListener("input", () => loadServer(false));  // the user's settings stay
  await loadServer(true);
}

async function loadServer(fill) {
  // with a key set, /health tells its settings only to a caller sending the key
  try {
    server = await (await fetch("/health", {headers: headers()})).json();
    $("key-row").hidden = !server.auth_required;
    const d = server.defaults;
    if (!d) {
      $("status").textContent = "enter this server's API key";
      return;
    }
    if (fill) {
      $("temperature").value = d.temperature; $("top_k").value = d.top_k; $("top_p").value = d.top_p;
      $("repetition_penalty").value = d.repetition_penalty; $("max_tokens").value = d.max_tokens;
      $("max_tokens").max = d.max_tokens_cap; $("system").value = d.system || "";
      for (const id of ["temperature", "top_p", "repetition_penalty"]) $(id).dispatchEvent(new Event("input"));
    }
    $("status").textContent = `${server.model} · ${server.device} · context ${server.context_length} tokens`;
  } catch (e) {
    $("status").textContent = "server unreachable";
  }
}

init();
