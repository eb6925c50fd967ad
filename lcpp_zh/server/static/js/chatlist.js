// The list of chats: new, switch, search (titles and messages), rename, delete, export and import (JSON).

import { renderChat, startChat } from "./chat.js";
import { t } from "./i18n.js";
import { characterById, avatarElement } from "./settings.js";
import { chatMatches, deleteChat, exportData, importData, saveSoon, state } from "./store.js";
import { $, ask, closeDrawers, iconButton, isNarrow, toast } from "./ui.js";

function title(chat) { return chat.title || t("untitled"); }

function when(ms) {
  const date = new Date(ms);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString();
}

export function renderChatList() {
  const list = $("chat-list");
  list.textContent = "";
  const query = $("chat-search").value.trim();
  const chats = state.chats.filter((c) => chatMatches(c, query));
  for (const chat of chats) {
    const item = document.createElement("li");
    item.className = `chat-item${chat.id === state.activeId ? " active" : ""}`;
    item.dataset.id = chat.id;
    const open = Object.assign(document.createElement("button"), { type: "button", className: "open" });
    open.appendChild(avatarElement(characterById(chat.characterId)));
    const text = Object.assign(document.createElement("span"), { className: "text" });
    text.append(Object.assign(document.createElement("span"), { className: "title", textContent: title(chat) }),
                Object.assign(document.createElement("small"), { textContent: when(chat.updated) }));
    open.appendChild(text);
    open.addEventListener("click", () => switchTo(chat.id));
    item.append(open, iconButton("rename", "rename", () => rename(chat)), iconButton("delete", "delete", () => remove(chat)));
    list.appendChild(item);
  }
  if (!chats.length && query) {
    list.appendChild(Object.assign(document.createElement("li"), { className: "empty", textContent: t("noMatches") }));
  }
}

function switchTo(id) {
  state.activeId = id;
  saveSoon();
  renderChat();
  renderChatList();
  if (isNarrow()) closeDrawers();
}

async function rename(chat) {
  const name = await ask(t("renamePrompt"), { value: title(chat) });
  if (!name) return;
  chat.title = name;
  chat.titled = true;
  saveSoon();
  renderChatList();
}

async function remove(chat) {
  if (!(await ask(t("confirmDeleteChat", { title: title(chat) })))) return;
  deleteChat(chat.id);
  renderChat();
  renderChatList();
}

function exportChats() {
  const blob = new Blob([JSON.stringify(exportData(), null, 2)], { type: "application/json" });
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(blob), download: `lcpp-zh-chats-${new Date().toISOString().slice(0, 10)}.json` });
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

async function importChats(file) {
  try {
    const count = importData(JSON.parse(await file.text()));
    toast(t("imported", { n: count }));
  } catch (err) {
    toast(t("importFailed", { msg: err.message }));
  }
  $("import-file").value = "";
  renderChat();
  renderChatList();
  if (isNarrow()) closeDrawers();
}

export function initChatList() {
  $("new-chat").addEventListener("click", () => {
    startChat();
    if (isNarrow()) closeDrawers();
    $("input").focus();
  });
  $("chat-search").addEventListener("input", renderChatList);
  $("export-chats").addEventListener("click", exportChats);
  $("import-chats").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", (e) => { if (e.target.files[0]) importChats(e.target.files[0]); });
  renderChatList();
}
