// lcpp-zh web chat: chat and notebook (raw completion) modes over the server's OpenAI-compatible API.
// No build step and nothing fetched from elsewhere: plain DOM, fetch + SSE parsing, a tiny Markdown renderer.
// The conversation and settings live in localStorage, so a reload keeps them.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "lcpp-zh-chat";
const SETTINGS = ["model", "template", "system", "temperature", "top_p", "top_k", "repeat_penalty", "max_tokens"];
const KEY_STORE = "lcpp-zh-api-key";  // sessionStorage only: the key is not kept after the tab closes
let conversation = [];
let controller = null;

// ---- Markdown: escape everything first, then add a few constructs; never inject raw HTML. ----
function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function inline(text) {
  return text
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
    .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
}

function renderMarkdown(source) {
  const out = [];
  const parts = source.split(/```/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {  // inside a code fence; the first line may name the language
      const body = part.replace(/^[\w+-]*\n/, "");
      out.push(`<pre><code>${escapeHtml(body)}</code></pre>`);
      return;
    }
    let list = null;
    for (const raw of escapeHtml(part).split("\n")) {
      const line = raw.trimEnd();
      const item = line.match(/^\s*(?:[-*]|\d+\.)\s+(.*)$/);
      if (item) {
        if (!list) { list = /^\s*\d/.test(line) ? "ol" : "ul"; out.push(`<${list}>`); }
        out.push(`<li>${inline(item[1])}</li>`);
        continue;
      }
      if (list) { out.push(`</${list}>`); list = null; }
      const heading = line.match(/^(#{1,4})\s+(.*)$/);
      if (heading) out.push(`<h${heading[1].length + 2}>${inline(heading[2])}</h${heading[1].length + 2}>`);
      else if (line) out.push(`<p>${inline(line)}</p>`);
    }
    if (list) out.push(`</${list}>`);
  });
  return out.join("");
}

// ---- settings and storage ----
function saveState() {
  const settings = {};
  for (const id of SETTINGS) settings[id] = $(id).value;
  localStorage.setItem(STORE, JSON.stringify({ conversation, settings, notebook: $("notebook-text").value }));
  sessionStorage.setItem(KEY_STORE, $("api_key").value);
}

function loadState() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
    conversation = Array.isArray(saved.conversation) ? saved.conversation : [];
    for (const [id, value] of Object.entries(saved.settings || {})) if ($(id) && id !== "model" && id !== "template") $(id).value = value;
    $("notebook-text").value = saved.notebook || "";
    $("api_key").value = sessionStorage.getItem(KEY_STORE) || "";
    return saved.settings || {};
  } catch (err) {
    return {};
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${(body.error && body.error.message) || body.status || response.statusText}`;
  } catch (err) {
    return `${response.status}: ${response.statusText}`;
  }
}

async function loadModels(saved) {
  try {
    const models = await getJson("/v1/models");
    $("model").innerHTML = "";
    for (const m of models.data) $("model").add(new Option(`${m.id}`, m.id));
    if (saved.model && models.data.some((m) => m.id === saved.model)) $("model").value = saved.model;
    const info = await getJson("/v1/templates");
    $("template").length = 1;  // keep "(model default)", drop the names of an earlier load
    for (const name of info.templates) $("template").add(new Option(name, name));
    if (saved.template && info.templates.includes(saved.template)) $("template").value = saved.template;
    setStatus("就绪 ready");
  } catch (err) {
    setStatus(`无法加载模型 ${err.message}`);
    if (String(err.message).startsWith("503")) setTimeout(() => loadModels(saved), 2000);
  }
}

function sampling() {
  const body = { model: $("model").value || undefined, stream: true };
  for (const id of ["temperature", "top_p", "repeat_penalty"]) if ($(id).value !== "") body[id] = Number($(id).value);
  for (const id of ["top_k", "max_tokens"]) if ($(id).value !== "") body[id] = parseInt($(id).value, 10);
  if ($("template").value) body.template = $("template").value;
  return body;
}

// Read an SSE body and call onText for each text piece; returns the finish reason.
async function readStream(response, pick, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        const text = pick(choice);
        if (text) onText(text);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}

// ---- chat mode ----
function addBubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  if (role === "assistant") div.innerHTML = renderMarkdown(text);
  else div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function renderConversation() {
  $("messages").innerHTML = "";
  for (const m of conversation) addBubble(m.role, m.content);
}

function busy(on, stopId) {
  $("send").disabled = on;
  $("generate").disabled = on;
  $(stopId).disabled = !on;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  conversation.push({ role: "user", content: text });
  addBubble("user", text);
  const messages = [];
  if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value.trim() });
  messages.push(...conversation);
  const reply = { role: "assistant", content: "" };
  const bubble = addBubble("assistant", "");
  bubble.classList.add("streaming");
  controller = new AbortController();
  busy(true, "stop");
  setStatus("生成中 generating…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ ...sampling(), messages }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const finish = await readStream(response, (c) => c.delta && c.delta.content, (piece) => {
      reply.content += piece;
      bubble.innerHTML = renderMarkdown(reply.content);
      $("messages").scrollTop = $("messages").scrollHeight;
    });
    setStatus(`完成 done (${finish || "stop"})`);
  } catch (err) {
    if (err.name === "AbortError") setStatus("已停止 stopped");
    else { addBubble("error", `错误 error: ${err.message}`); setStatus("出错 error"); }
  } finally {
    bubble.classList.remove("streaming");
    if (reply.content) conversation.push(reply);
    controller = null;
    busy(false, "stop");
    saveState();
  }
}

// ---- notebook mode ----
async function generateNotebook() {
  if (controller) return;
  const area = $("notebook-text");
  controller = new AbortController();
  busy(true, "stop-notebook");
  setStatus("生成中 generating…");
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ ...sampling(), prompt: area.value }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const finish = await readStream(response, (c) => c.text, (piece) => { area.value += piece; area.scrollTop = area.scrollHeight; });
    setStatus(`完成 done (${finish || "stop"})`);
  } catch (err) {
    setStatus(err.name === "AbortError" ? "已停止 stopped" : `出错 error: ${err.message}`);
  } finally {
    controller = null;
    busy(false, "stop-notebook");
    saveState();
  }
}

function switchMode(mode) {
  $("chat-view").hidden = mode !== "chat";
  $("notebook-view").hidden = mode !== "notebook";
  $("mode-chat").classList.toggle("active", mode === "chat");
  $("mode-notebook").classList.toggle("active", mode === "notebook");
}

function stop() { if (controller) controller.abort(); }

function init() {
  const saved = loadState();
  renderConversation();
  $("chat-form").addEventListener("submit", sendChat);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("stop").addEventListener("click", stop);
  $("stop-notebook").addEventListener("click", stop);
  $("generate").addEventListener("click", generateNotebook);
  $("mode-chat").addEventListener("click", () => switchMode("chat"));
  $("mode-notebook").addEventListener("click", () => switchMode("notebook"));
  $("clear").addEventListener("click", () => { conversation = []; renderConversation(); saveState(); });
  for (const id of SETTINGS) $(id).addEventListener("change", saveState);
  $("api_key").addEventListener("change", () => { saveState(); loadModels(saved); });
  loadModels(saved);
}

init();
