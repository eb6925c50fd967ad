// Everything the page keeps lives in the browser's localStorage: chats, characters, the user's sampling
// presets, settings and the default/notebook texts. Writes are batched (one per 300 ms) and flushed when the
// tab is hidden. Export and import use one JSON format. The API key is never stored here (sessionStorage).

const KEYS = { chats: "lcpp-zh:chats", characters: "lcpp-zh:characters", presets: "lcpp-zh:presets",
               settings: "lcpp-zh:settings", texts: "lcpp-zh:texts" };
const LEGACY_KEY = "lcpp-zh-chat";  // the first page's single conversation
export const EXPORT_FORMAT = "lcpp-zh-chats";

export const state = {
  chats: [],        // [{id, title, titled, characterId, created, updated, messages: [Message]}]
  activeId: null,
  characters: [],   // the user's: [{id, name, avatar, persona, greeting}]
  presets: [],      // the user's: [{id, name, values}]
  settings: {},
  texts: { defaultInput: "", defaultOutput: "", notebook: "" },
};
// Message: {id, role: "user"|"assistant", content, stats?, versions?: [{content, stats}], v?}

let timer = null;
let onError = () => {};

export function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

export function loadStore(errorHandler) {
  onError = errorHandler;
  const saved = read(KEYS.chats, {});
  state.chats = Array.isArray(saved.chats) ? saved.chats.map(cleanChat).filter(Boolean) : [];
  state.activeId = saved.activeId;
  state.characters = read(KEYS.characters, []).filter((c) => c?.id && typeof c.name === "string");
  state.presets = read(KEYS.presets, []).filter((p) => p?.id && p.values);
  state.settings = read(KEYS.settings, {});
  Object.assign(state.texts, read(KEYS.texts, {}));
  migrateLegacy();
  if (!state.chats.some((c) => c.id === state.activeId)) state.activeId = state.chats[0]?.id ?? null;
}

// The earlier page kept one conversation under another key: it becomes the first chat.
function migrateLegacy() {
  const legacy = read(LEGACY_KEY, null);
  if (!legacy) return;
  const messages = Array.isArray(legacy.conversation) ? legacy.conversation : [];
  const chat = cleanChat({ id: newId(), messages });
  if (chat?.messages.length) state.chats.unshift(chat);
  if (legacy.notebook && !state.texts.notebook) state.texts.notebook = String(legacy.notebook);
  localStorage.removeItem(LEGACY_KEY);
  saveSoon();
}

export function saveSoon() {
  if (timer === null) timer = setTimeout(saveNow, 300);
}

export function saveNow() {
  clearTimeout(timer);
  timer = null;
  try {
    localStorage.setItem(KEYS.chats, JSON.stringify({ activeId: state.activeId, chats: state.chats }));
    localStorage.setItem(KEYS.characters, JSON.stringify(state.characters));
    localStorage.setItem(KEYS.presets, JSON.stringify(state.presets));
    localStorage.setItem(KEYS.settings, JSON.stringify(state.settings));
    localStorage.setItem(KEYS.texts, JSON.stringify(state.texts));
  } catch (err) {
    onError(err);
  }
}

addEventListener("pagehide", saveNow);
document.addEventListener("visibilitychange", () => { if (document.hidden) saveNow(); });

// ---- chats ----
export function activeChat() {
  return state.chats.find((c) => c.id === state.activeId) || null;
}

export function createChat(characterId) {
  const now = Date.now();
  const chat = { id: newId(), title: "", titled: false, characterId, created: now, updated: now, messages: [] };
  state.chats.unshift(chat);
  state.activeId = chat.id;
  saveSoon();
  return chat;
}

export function deleteChat(id) {
  state.chats = state.chats.filter((c) => c.id !== id);
  if (state.activeId === id) state.activeId = state.chats[0]?.id ?? null;
  saveSoon();
}

// An untitled chat is named after its first question.
function retitle(chat) {
  if (chat.titled) return;
  const first = chat.messages.find((m) => m.role === "user");
  chat.title = first ? first.content.replace(/\s+/g, " ").trim().slice(0, 40) : "";
}

export function touch(chat) {
  chat.updated = Date.now();
  retitle(chat);
  saveSoon();
}

export function chatMatches(chat, query) {
  if (!query) return true;
  const q = query.toLowerCase();
  return (chat.title || "").toLowerCase().includes(q)
    || chat.messages.some((m) => m.content.toLowerCase().includes(q));
}

// ---- import / export ----
function cleanStats(stats) {
  return stats && typeof stats === "object" ? JSON.parse(JSON.stringify(stats)) : undefined;
}

function cleanMessage(m) {
  if (!m || (m.role !== "user" && m.role !== "assistant") || typeof m.content !== "string") return null;
  const message = { id: typeof m.id === "string" ? m.id : newId(), role: m.role, content: m.content };
  if (m.stats) message.stats = cleanStats(m.stats);
  if (typeof m.error === "string") message.error = m.error;
  if (Array.isArray(m.versions) && m.versions.length > 1) {
    message.versions = m.versions.filter((v) => v && typeof v.content === "string")
      .map((v) => ({ content: v.content, stats: cleanStats(v.stats) }));
    message.v = Math.min(Math.max(0, Number(m.v) || 0), message.versions.length - 1);
  }
  return message;
}

function cleanChat(c) {
  if (!c || !Array.isArray(c.messages)) return null;
  const now = Date.now();
  const chat = {
    id: typeof c.id === "string" ? c.id : newId(),
    title: typeof c.title === "string" ? c.title : "",
    titled: Boolean(c.titled),
    characterId: typeof c.characterId === "string" ? c.characterId : "assistant",
    created: Number(c.created) || now,
    updated: Number(c.updated) || now,
    messages: c.messages.map(cleanMessage).filter(Boolean),
  };
  retitle(chat);
  return chat;
}

export function exportData() {
  return { format: EXPORT_FORMAT, version: 1, exported: new Date().toISOString(),
           chats: state.chats, characters: state.characters, presets: state.presets };
}

// Imported chats are added (a chat whose id is already here gets a new id); characters and presets too.
export function importData(data) {
  if (!data || data.format !== EXPORT_FORMAT || !Array.isArray(data.chats)) {
    throw new Error(`not an ${EXPORT_FORMAT} file`);
  }
  const chats = data.chats.map(cleanChat).filter(Boolean);
  const known = new Set(state.chats.map((c) => c.id));
  for (const chat of chats) if (known.has(chat.id)) chat.id = newId();
  state.chats = [...chats, ...state.chats].sort((a, b) => b.updated - a.updated);
  for (const character of Array.isArray(data.characters) ? data.characters : []) {
    if (character && typeof character.id === "string" && typeof character.name === "string"
        && !state.characters.some((c) => c.id === character.id)) {
      const { id, name, avatar = "", persona = "", greeting = "" } = character;
      state.characters.push({ id, name, avatar: String(avatar), persona: String(persona), greeting: String(greeting) });
    }
  }
  for (const preset of Array.isArray(data.presets) ? data.presets : []) {
    if (preset && typeof preset.id === "string" && preset.values && !state.presets.some((p) => p.id === preset.id)) {
      state.presets.push({ id: preset.id, name: String(preset.name || preset.id), values: { ...preset.values } });
    }
  }
  if (chats.length) state.activeId = chats[0].id;
  saveNow();
  return chats.length;
}
