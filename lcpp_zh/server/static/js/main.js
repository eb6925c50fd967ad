// lcpp-zh web page: wires the modules together. Plain ES modules, no build step; the Markdown, math and
// code libraries are vendored under /static/vendor and loaded before this module runs.

import { initChat, renderChat, startChat } from "./chat.js";
import { initChatList, renderChatList } from "./chatlist.js";
import { applyI18n, initLang, onLangChange, t, toggleLang } from "./i18n.js";
import { characterById, currentCharacterId, greetingOf, initSettings, loadModels, on, refreshModels,
         relabelSettings } from "./settings.js";
import { activeChat, loadStore, newId, saveSoon, state, touch } from "./store.js";
import { initTextModes } from "./textmodes.js";
import { $, initDrawers, redrawStatus, toast } from "./ui.js";

const MODES = ["chat", "default", "notebook"];

function switchMode(mode) {
  if (!MODES.includes(mode)) mode = "chat";
  state.settings.mode = mode;
  for (const name of MODES) {
    $(`view-${name}`).hidden = name !== mode;
    $(`mode-${name}`).classList.toggle("active", name === mode);
    $(`mode-${name}`).setAttribute("aria-selected", String(name === mode));
  }
  saveSoon();
}

// Picking a character: a chat that has not started yet takes it (and its greeting); otherwise a new chat opens.
function characterChanged() {
  const chat = activeChat();
  const id = currentCharacterId();
  if (!chat) {
    startChat();
  } else if (!chat.messages.some((m) => m.role === "user")) {
    chat.characterId = id;
    const greeting = greetingOf(characterById(id));
    chat.messages = greeting ? [{ id: newId(), role: "assistant", content: greeting }] : [];
    touch(chat);
    renderChat();
  } else if (chat.characterId !== id) {
    startChat();
  } else {
    renderChat();  // the same character, edited: its new name and avatar
  }
  renderChatList();
}

function init() {
  initLang();
  loadStore(() => toast(t("storageFull")));
  initDrawers();
  initSettings();
  initChat(renderChatList);
  initChatList();
  initTextModes();
  renderChat();
  for (const name of MODES) $(`mode-${name}`).addEventListener("click", () => switchMode(name));
  switchMode(state.settings.mode);
  $("lang").addEventListener("click", toggleLang);
  onLangChange(() => { applyI18n(); relabelSettings(); renderChat(); renderChatList(); redrawStatus(); });
  on("character", characterChanged);
  $("open-settings").addEventListener("click", refreshModels);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshModels(); });
  loadModels();
}

init();
