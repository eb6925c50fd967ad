// The settings panel: served models with their state, the chat template, characters, sampling presets,
// LoRA adapter scales (when the model has adapters), stop strings, grammar and the API key.
// samplingBody() turns it into the fields of an OpenAI request.

import { getJson, HttpError, postJson, setApiKey, apiKey } from "./api.js";
import { t } from "./i18n.js";
import { newId, saveSoon, state } from "./store.js";
import { $, ask, setStatus, toast } from "./ui.js";

const FLOAT_FIELDS = ["temperature", "top_p", "min_p", "repeat_penalty"];
const INT_FIELDS = ["top_k", "max_tokens", "seed"];
const PRESET_FIELDS = ["temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens"];
// seed: the server's own defaults (GET /v1/defaults, from lcpp_zh.runtime.sampling), filled in when they arrive;
// precise: text-generation-webui's LLaMA-Precise; creative: a hotter temperature held in by min_p.
const SEED_PRESET = { id: "seed", key: "presetSeed", values: {} };
const BUILTIN_PRESETS = [
  SEED_PRESET,
  { id: "precise", key: "presetPrecise", values: { temperature: 0.7, top_p: 0.1, top_k: 40, min_p: 0, repeat_penalty: 1.18, max_tokens: 512 } },
  { id: "creative", key: "presetCreative", values: { temperature: 1.0, top_p: 1, top_k: 0, min_p: 0.05, repeat_penalty: 1.1, max_tokens: 1024 } },
];
const BUILTIN_CHARACTER = { id: "assistant", builtin: true, avatar: "", persona: "", greeting: "" };

let models = [];
let templateDefaults = {};
let limits = null;  // the server's request limits (GET /v1/defaults), checked before anything is sent
let retryTimer = null;
let pollTimer = null;
const listeners = { model: [], character: [] };
export function on(event, listener) { listeners[event].push(listener); }
function emit(event) { for (const listener of listeners[event]) listener(); }

// ---- models and templates ----
export function selectedModel() { return state.settings.model || models[0]?.id || ""; }

// Where a model is on the server: "loaded", "loading", or "available" (the first request for it loads it).
// A server that does not say serves loaded models only.
export function modelStatus(id) {
  const m = models.find((x) => x.id === id) || models[0];
  return m?.status || "loaded";
}

// The badge of a model: its load status, and once loaded, its runner's state.
function modelBadge(m) {
  const status = m.status || "loaded";
  if (status === "available" || status === "loading") return status;
  const raw = String(m.state || "ready").toLowerCase();
  if (raw === "failed" || raw === "error") return "failed";
  if (raw === "restarting" || raw === "loading") return raw;
  return "ready";
}

// States that change by themselves: the list is refreshed every 10 s while a model is in one.
const CHANGING = new Set(["loading", "restarting", "failed"]);
function schedulePoll() {
  clearTimeout(pollTimer);
  if (models.some((m) => CHANGING.has(modelBadge(m)))) pollTimer = setTimeout(refreshModels, 10_000);
}

async function loadDefaults() {
  const info = await getJson("/v1/defaults");
  limits = info.limits || null;
  for (const field of PRESET_FIELDS) SEED_PRESET.values[field] = info.sampling[field] ?? "";
  // On a first visit (nothing saved yet) the fields show them.
  if (!state.settings.sampling && state.settings.preset === SEED_PRESET.id) applyPreset(SEED_PRESET.id);
  else renderPresets();
}

export async function loadModels() {
  clearTimeout(retryTimer);
  clearTimeout(pollTimer);
  setStatus("connecting");
  try {
    models = (await getJson("/v1/models")).data;
    if (!models.some((m) => m.id === state.settings.model)) state.settings.model = models[0] ? models[0].id : "";
    renderModels();
    schedulePoll();
    await loadDefaults();
    const info = await getJson("/v1/templates");
    templateDefaults = info.models || {};
    const select = $("template");
    select.length = 1;
    for (const name of info.templates) select.add(new Option(name, name));
    select.value = info.templates.includes(state.settings.template) ? state.settings.template : "";
    renderTemplateDefault();
    setStatus("ready", {}, "ok");
    await loadLora();
  } catch (err) {
    if (err instanceof HttpError && err.status === 503) {
      setStatus("loading", {}, "busy");
      retryTimer = setTimeout(loadModels, 2000);
    } else {
      setStatus("cannotLoad", { msg: err.message }, "error");
    }
  }
}

// The models' states change (loaded on demand, a runner restarting or failing): refreshed quietly while the
// settings are seen, after a request that loaded a model, and every 10 s while a state is changing.
export async function refreshModels() {
  clearTimeout(pollTimer);
  try {
    const fresh = (await getJson("/v1/models")).data;
    if (JSON.stringify(fresh) !== JSON.stringify(models)) {
      models = fresh;
      renderModels();
    }
  } catch { /* the status line reports lasting failures; a missed refresh is retried below */ }
  schedulePoll();
}

function renderModels() {
  const list = $("model-list");
  list.textContent = "";
  for (const m of models) {
    const label = document.createElement("label");
    label.className = "model";
    const radio = Object.assign(document.createElement("input"), { type: "radio", name: "model", value: m.id });
    radio.checked = m.id === selectedModel();
    radio.addEventListener("change", () => {
      state.settings.model = m.id;
      saveSoon();
      renderTemplateDefault();
      loadLora();
      emit("model");
    });
    const name = Object.assign(document.createElement("span"), { className: "model-name", textContent: m.id });
    const which = modelBadge(m);
    const badge = Object.assign(document.createElement("span"), { className: `state ${which}` });
    badge.textContent = t(`state${which[0].toUpperCase()}${which.slice(1)}`);
    badge.title = m.error || (which === "available" ? t("availableHint") : "");
    const detail = document.createElement("small");
    detail.textContent = [m.n_ctx_slot ? t("ctx", { n: m.n_ctx_slot }) : "", m.template || "",
                          m.restarts ? t("restarts", { n: m.restarts }) : ""].filter(Boolean).join(" · ");
    label.append(radio, name, badge, detail);
    list.appendChild(label);
  }
}

function renderTemplateDefault() {
  $("template").options[0].textContent = t("templateDefault", { name: templateDefaults[selectedModel()] || "auto" });
}

// ---- LoRA adapters (GET/POST /v1/lora); the section shows only when the model has some ----
async function loadLora() {
  const section = $("lora-section");
  const list = $("lora-list");
  section.hidden = true;
  list.textContent = "";
  if (modelStatus(selectedModel()) !== "loaded") return;  // asking would load it
  let adapters;
  try {
    adapters = await getJson(`/v1/lora?model=${encodeURIComponent(selectedModel())}`);
  } catch (err) {
    setStatus("loraFailed", { msg: err.message }, "error");
    return;
  }
  section.hidden = !adapters.length;
  for (const adapter of adapters) {
    const row = document.createElement("label");
    row.className = "lora";
    row.dataset.id = adapter.id;
    const name = Object.assign(document.createElement("span"), { textContent: adapter.name, title: adapter.path || "" });
    const range = Object.assign(document.createElement("input"), { type: "range", min: 0, max: 2, step: 0.05, value: adapter.scale });
    const number = Object.assign(document.createElement("input"), { type: "number", min: 0, max: 2, step: 0.05, value: adapter.scale });
    range.addEventListener("input", () => { number.value = range.value; });
    number.addEventListener("input", () => { range.value = number.value; });
    row.append(name, range, number);
    list.appendChild(row);
  }
}

async function applyLora() {
  const lora = [...$("lora-list").querySelectorAll(".lora")].map((row) => (
    { id: Number(row.dataset.id), scale: Number(row.querySelector("input[type=number]").value) }));
  try {
    await postJson("/v1/lora", { model: selectedModel(), lora });
    toast(t("loraApplied"));
  } catch (err) {
    toast(t("error", { msg: err.message }));
  }
}

// ---- sampling presets ----
function allPresets() {
  return [...BUILTIN_PRESETS.map((p) => ({ ...p, name: t(p.key), builtin: true })), ...state.presets];
}

function currentValues() {
  const values = {};
  for (const id of PRESET_FIELDS) values[id] = $(id).value === "" ? "" : Number($(id).value);
  return values;
}

function renderPresets() {
  const select = $("preset");
  select.textContent = "";
  const preset = allPresets().find((p) => p.id === state.settings.preset);
  const changed = preset && PRESET_FIELDS.some((id) => currentValues()[id] !== preset.values[id]);
  for (const [groupKey, builtin] of [["builtin", true], ["mine", false]]) {
    const group = document.createElement("optgroup");
    group.label = t(groupKey);
    for (const p of allPresets().filter((x) => Boolean(x.builtin) === builtin)) {
      group.appendChild(new Option(p.id === state.settings.preset && changed ? `${p.name} ${t("custom")}` : p.name, p.id));
    }
    if (group.children.length) select.appendChild(group);
  }
  select.value = state.settings.preset;
  $("preset-delete").disabled = !preset || preset.builtin;
}

function applyPreset(id) {
  const preset = allPresets().find((p) => p.id === id) || BUILTIN_PRESETS[0];
  state.settings.preset = preset.id;
  for (const field of PRESET_FIELDS) $(field).value = preset.values[field] ?? "";
  saveFields();
}

async function savePreset() {
  const name = await ask(t("presetName"), { value: "" });
  if (!name) return;
  const preset = { id: newId(), name, values: currentValues() };
  state.presets.push(preset);
  state.settings.preset = preset.id;
  saveFields();
}

async function deletePreset() {
  const preset = state.presets.find((p) => p.id === state.settings.preset);
  if (!preset || !(await ask(t("confirmDeletePreset", { name: preset.name })))) return;
  state.presets = state.presets.filter((p) => p.id !== state.settings.preset);
  applyPreset("seed");
}

function saveFields() {
  state.settings.sampling = {};
  for (const id of [...FLOAT_FIELDS, ...INT_FIELDS]) state.settings.sampling[id] = $(id).value;
  state.settings.stop_strings = $("stop_strings").value;
  state.settings.grammar = $("grammar").value;
  state.settings.template = $("template").value;
  renderPresets();
  saveSoon();
  const problem = limitProblem();
  if (problem) toast(problem);
}

function stopStrings() {
  return $("stop_strings").value.split("\n").map((s) => s.replace(/\\n/g, "\n")).filter((s) => s.trim());
}

// What the server would refuse in the stop strings or the grammar, said before anything is sent.
function limitProblem() {
  if (!limits) return null;
  const stops = stopStrings();
  if (stops.length > limits.max_stop_strings) return t("tooManyStops", { n: limits.max_stop_strings });
  if (stops.some((s) => [...s].length > limits.max_stop_chars)) return t("stopTooLong", { n: limits.max_stop_chars });
  if (new TextEncoder().encode($("grammar").value).length > limits.max_grammar_bytes) {
    return t("grammarTooLarge", { n: limits.max_grammar_bytes });
  }
  return null;
}

// The request's sampling fields; throws an Error to show the user when a limit is passed.
export function samplingBody() {
  const problem = limitProblem();
  if (problem) throw new Error(problem);
  const body = { model: selectedModel() || undefined };
  for (const id of FLOAT_FIELDS) if ($(id).value !== "") body[id] = Number($(id).value);
  for (const id of INT_FIELDS) if ($(id).value !== "") body[id] = parseInt($(id).value, 10);
  const stops = stopStrings();
  if (stops.length) body.stop = stops;
  if ($("grammar").value.trim()) body.grammar = $("grammar").value;
  return body;
}

export function chatTemplate() { return $("template").value || undefined; }

// ---- characters ----
export function characters() { return [BUILTIN_CHARACTER, ...state.characters]; }
export function characterById(id) { return characters().find((c) => c.id === id) || BUILTIN_CHARACTER; }
export function characterName(c) { return c.builtin ? t("assistant") : c.name; }
export function currentCharacterId() { return characterById(state.settings.character).id; }

function fill(text, c) {
  return text.replace(/\{\{char\}\}/gi, characterName(c)).replace(/\{\{user\}\}/gi, t("user"));
}
export function personaOf(c) { return fill(c.persona || "", c).trim(); }
export function greetingOf(c) { return fill(c.greeting || "", c).trim(); }

// An avatar element: a picture (data: URL), else the emoji or text given, else the name's first letter.
export function avatarElement(c, big = false) {
  const el = document.createElement("div");
  el.className = `avatar${big ? " big" : ""}`;
  const avatar = c ? String(c.avatar || "") : "";
  if (avatar.startsWith("data:image/")) {
    el.appendChild(Object.assign(document.createElement("img"), { src: avatar, alt: "" }));
  } else {
    el.textContent = avatar || (c ? Array.from(characterName(c))[0] : Array.from(t("user"))[0]).toUpperCase();
  }
  if (!c) el.classList.add("me");
  return el;
}

function renderCharacters() {
  const select = $("character");
  select.textContent = "";
  for (const c of characters()) select.add(new Option(characterName(c), c.id));
  select.value = currentCharacterId();
  $("character-edit").disabled = characterById(select.value).builtin === true;
}

export function selectCharacter(id) {
  state.settings.character = id;
  renderCharacters();
  saveSoon();
}

let editing = null;
let pickedAvatar = "";

function previewAvatar() {
  const preview = $("char-avatar-preview");
  const draft = { name: $("char-name").value || "?", avatar: pickedAvatar || $("char-avatar").value };
  preview.replaceWith(Object.assign(avatarElement(draft, true), { id: "char-avatar-preview" }));
}

function openCharacter(c) {
  editing = c;
  pickedAvatar = c && String(c.avatar || "").startsWith("data:image/") ? c.avatar : "";
  $("char-name").value = c ? c.name : "";
  $("char-avatar").value = c && !pickedAvatar ? c.avatar || "" : "";
  $("char-persona").value = c ? c.persona : "";
  $("char-greeting").value = c ? c.greeting : "";
  $("char-delete").hidden = !c;
  previewAvatar();
  $("character-dialog").returnValue = "";
  $("character-dialog").showModal();
  $("char-name").focus();
}

function closeCharacter() {
  const dialog = $("character-dialog");
  if (dialog.returnValue !== "ok") return;
  const values = { name: $("char-name").value.trim(), avatar: pickedAvatar || $("char-avatar").value.trim(),
                   persona: $("char-persona").value, greeting: $("char-greeting").value };
  if (!values.name) return;
  if (editing) Object.assign(editing, values);
  else state.characters.push({ id: newId(), ...values });
  selectCharacter(editing ? editing.id : state.characters[state.characters.length - 1].id);
  emit("character");
}

async function deleteCharacter() {
  if (!editing || !(await ask(t("confirmDeleteCharacter", { name: editing.name })))) return;
  state.characters = state.characters.filter((c) => c !== editing);
  $("character-dialog").close("cancel");
  selectCharacter(BUILTIN_CHARACTER.id);
  emit("character");
}

// A picked image becomes a 96 px square JPEG data URL, small enough for localStorage.
function pickAvatar(file) {
  const image = new Image();
  image.onload = () => {
    const canvas = Object.assign(document.createElement("canvas"), { width: 96, height: 96 });
    const side = Math.min(image.width, image.height);
    canvas.getContext("2d").drawImage(image, (image.width - side) / 2, (image.height - side) / 2, side, side, 0, 0, 96, 96);
    pickedAvatar = canvas.toDataURL("image/jpeg", 0.85);
    URL.revokeObjectURL(image.src);
    previewAvatar();
  };
  image.src = URL.createObjectURL(file);
}

// ---- wiring ----
export function initSettings() {
  const s = state.settings;
  if (!allPresets().some((p) => p.id === s.preset)) s.preset = "seed";
  const preset = allPresets().find((p) => p.id === s.preset);
  for (const id of [...FLOAT_FIELDS, ...INT_FIELDS]) {
    const saved = s.sampling?.[id];
    $(id).value = saved !== undefined ? saved : (preset.values[id] ?? "");
  }
  $("stop_strings").value = s.stop_strings || "";
  $("grammar").value = s.grammar || "";
  $("api_key").value = apiKey();
  for (const id of [...FLOAT_FIELDS, ...INT_FIELDS, "stop_strings", "grammar", "template"]) {
    $(id).addEventListener("change", saveFields);
  }
  $("preset").addEventListener("change", () => applyPreset($("preset").value));
  $("preset-save").addEventListener("click", savePreset);
  $("preset-delete").addEventListener("click", deletePreset);
  $("api_key").addEventListener("change", () => { setApiKey($("api_key").value); loadModels(); });
  $("lora-apply").addEventListener("click", applyLora);
  $("character").addEventListener("change", () => { selectCharacter($("character").value); emit("character"); });
  $("character-new").addEventListener("click", () => openCharacter(null));
  $("character-edit").addEventListener("click", () => openCharacter(characterById($("character").value)));
  $("character-dialog").addEventListener("close", closeCharacter);
  $("char-delete").addEventListener("click", deleteCharacter);
  $("char-avatar").addEventListener("input", () => { pickedAvatar = ""; previewAvatar(); });
  $("char-name").addEventListener("input", previewAvatar);
  $("char-avatar-pick").addEventListener("click", () => $("char-avatar-file").click());
  $("char-avatar-file").addEventListener("change", (e) => { if (e.target.files[0]) pickAvatar(e.target.files[0]); });
  renderPresets();
  renderCharacters();
}

export function relabelSettings() {
  renderPresets();
  renderCharacters();
  renderModels();
  if ($("template").options.length) renderTemplateDefault();
}
