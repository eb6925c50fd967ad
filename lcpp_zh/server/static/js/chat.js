// Chat mode: the active chat's messages, sending and streaming answers through /v1/chat/completions,
// and the actions under each message (copy, edit and resend, regenerate with kept versions, delete),
// with the answer's token counts and speed beneath it.

import { Timer } from "./api.js";
import { busy, generate, stopGeneration } from "./generation.js";
import { t } from "./i18n.js";
import { LiveMarkdown } from "./markdown.js";
import { characterById, characterName, avatarElement, chatTemplate, greetingOf, personaOf,
         samplingBody, currentCharacterId } from "./settings.js";
import { activeChat, createChat, newId, saveNow, saveSoon, touch } from "./store.js";
import { $, autoGrow, copyText, flash, iconButton } from "./ui.js";

const live = new Map();  // message id -> LiveMarkdown of its element on screen
let onChatsChanged = () => {};

// ---- drawing ----
export function renderChat() {
  const box = $("messages");
  box.textContent = "";
  live.clear();
  const chat = activeChat();
  if (!chat?.messages.length) {
    box.appendChild(Object.assign(document.createElement("p"), { className: "empty", textContent: t("emptyChat") }));
    return;
  }
  for (const message of chat.messages) box.appendChild(messageElement(chat, message));
  box.scrollTop = box.scrollHeight;
}

function messageElement(chat, message) {
  const character = characterById(chat.characterId);
  const el = document.createElement("article");
  el.className = `msg ${message.role}`;
  el.dataset.id = message.id;
  el.appendChild(avatarElement(message.role === "assistant" ? character : null));
  const body = Object.assign(document.createElement("div"), { className: "body" });
  const name = message.role === "assistant" ? characterName(character) : t("user");
  body.appendChild(Object.assign(document.createElement("div"), { className: "name", textContent: name }));
  const content = Object.assign(document.createElement("div"), { className: "content" });
  body.appendChild(content);
  const foot = Object.assign(document.createElement("div"), { className: "foot" });
  foot.append(Object.assign(document.createElement("span"), { className: "stats" }), actionsElement(chat, message));
  body.appendChild(foot);
  el.appendChild(body);
  fillMessage(el, message);
  return el;
}

function fillMessage(el, message) {
  const content = el.querySelector(".content");
  if (message.role === "assistant") {
    content.classList.add("md");
    let view = live.get(message.id);
    if (!view || view.root !== content) {
      view = new LiveMarkdown(content);
      live.set(message.id, view);
    }
    view.update(message.content);
  } else {
    content.textContent = message.content;
  }
  const stats = el.querySelector(".stats");
  stats.textContent = message.error ? `⚠ ${message.error}` : statsText(message.stats);
  stats.classList.toggle("error", Boolean(message.error));
  const versions = el.querySelector(".versions");
  if (versions) versions.querySelector("span").textContent = `${message.v + 1}/${message.versions.length}`;
}

function statsText(stats) {
  if (!stats) return "";
  const parts = [];
  if (stats.completion_tokens !== undefined) parts.push(t("statTokens", { n: stats.completion_tokens }));
  if (stats.tps !== undefined) parts.push(t("statSpeed", { v: stats.tps.toFixed(1) }));
  if (stats.prompt_tokens !== undefined) parts.push(t("statPrompt", { n: stats.prompt_tokens }));
  if (stats.ttft !== undefined) parts.push(t("statFirst", { v: stats.ttft.toFixed(2) }));
  parts.push(t("statTime", { v: stats.seconds.toFixed(1) }));
  if (stats.stopped) parts.push(t("statStopped"));
  return parts.join(" · ");
}

function actionsElement(chat, message) {
  const bar = Object.assign(document.createElement("div"), { className: "actions" });
  if (message.versions && message.versions.length > 1) {
    const nav = Object.assign(document.createElement("span"), { className: "versions" });
    nav.append(iconButton("previous", "previous", () => showVersion(chat, message, -1)),
               document.createElement("span"),
               iconButton("next", "next", () => showVersion(chat, message, 1)));
    bar.appendChild(nav);
  }
  bar.appendChild(iconButton("copy", "copy", async (e) => {
    if (await copyText(message.content)) flash(e.currentTarget);
  }));
  bar.appendChild(iconButton("edit", "edit", () => editMessage(chat, message)));
  if (message.role === "assistant") bar.appendChild(iconButton("regenerate", "regenerate", () => regenerate(chat, message)));
  bar.appendChild(iconButton("delete", "delete", () => deleteMessage(chat, message)));
  return bar;
}

function elementOf(message) {
  return $("messages").querySelector(`.msg[data-id="${CSS.escape(message.id)}"]`);
}

function nearBottom(box) { return box.scrollHeight - box.scrollTop - box.clientHeight < 80; }

// ---- actions ----
function showVersion(chat, message, step) {
  if (busy()) return;
  message.v = (message.v + step + message.versions.length) % message.versions.length;
  ({ content: message.content, stats: message.stats } = message.versions[message.v]);
  touch(chat);
  renderChat();
}

function editMessage(chat, message) {
  if (busy()) return;
  const el = elementOf(message);
  const content = el.querySelector(".content");
  const area = Object.assign(document.createElement("textarea"), { className: "edit-box", value: message.content });
  const buttons = Object.assign(document.createElement("div"), { className: "buttons end" });
  const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: t("cancel") });
  const save = Object.assign(document.createElement("button"), { type: "button", className: "primary",
    textContent: message.role === "user" ? t("saveAndSend") : t("save") });
  cancel.addEventListener("click", renderChat);
  save.addEventListener("click", () => {
    const text = area.value.trim();
    if (!text || busy()) return;
    message.content = text;
    if (message.versions) message.versions[message.v].content = text;
    if (message.role === "user") {
      chat.messages.splice(chat.messages.indexOf(message) + 1);
      answer(chat, newAnswer(chat));
    } else {
      touch(chat);
      renderChat();
    }
  });
  buttons.append(cancel, save);
  content.replaceWith(area);
  el.querySelector(".actions").replaceWith(buttons);
  autoGrow(area, 0.6);
  area.addEventListener("input", () => autoGrow(area, 0.6));
  area.focus();
}

function regenerate(chat, message) {
  if (busy()) return;
  const index = chat.messages.indexOf(message);
  chat.messages.splice(index + 1);
  if (!message.versions) {
    message.versions = [{ content: message.content, stats: message.stats }];
    message.v = 0;
  }
  message.versions.push({ content: "", stats: undefined });
  message.v = message.versions.length - 1;
  message.content = "";
  message.stats = undefined;
  answer(chat, message);
}

function deleteMessage(chat, message) {
  if (busy()) return;
  chat.messages.splice(chat.messages.indexOf(message), 1);
  touch(chat);
  renderChat();
  onChatsChanged();
}

// ---- sending ----
function newAnswer(chat) {
  const message = { id: newId(), role: "assistant", content: "" };
  chat.messages.push(message);
  return message;
}

// A new chat with the selected character; its greeting, if any, opens the conversation.
export function startChat() {
  const chat = createChat(currentCharacterId());
  const greeting = greetingOf(characterById(chat.characterId));
  if (greeting) chat.messages.push({ id: newId(), role: "assistant", content: greeting });
  renderChat();
  onChatsChanged();
  return chat;
}

export function send(text) {
  if (busy() || !text.trim()) return false;
  const chat = activeChat() || startChat();
  chat.messages.push({ id: newId(), role: "user", content: text.trim() });
  answer(chat, newAnswer(chat));
  return true;
}

function requestMessages(chat, upTo) {
  const messages = [];
  const persona = personaOf(characterById(chat.characterId));
  if (persona) messages.push({ role: "system", content: persona });
  for (const m of chat.messages.slice(0, chat.messages.indexOf(upTo))) {
    if (m.content) messages.push({ role: m.role, content: m.content });
  }
  return messages;
}

async function answer(chat, message) {
  touch(chat);
  renderChat();
  onChatsChanged();
  delete message.error;
  let el = elementOf(message);
  if (el) el.classList.add("streaming");
  const timer = new Timer();
  let frame = null;
  const draw = () => {
    frame = null;
    if (!el?.isConnected) el = elementOf(message);  // the chat was switched away and back
    if (!el) return;
    const box = $("messages");
    const follow = nearBottom(box);
    el.classList.add("streaming");
    fillMessage(el, message);
    if (follow) box.scrollTop = box.scrollHeight;
  };
  const makeBody = () => ({ ...samplingBody(), template: chatTemplate(), messages: requestMessages(chat, message),
                            stream: true, stream_options: { include_usage: true } });
  const outcome = await generate("chat", "/v1/chat/completions", makeBody, (choice) => {
    const piece = choice.delta?.content;
    if (!piece) return;
    timer.mark();
    message.content += piece;
    if (frame === null && activeChat() === chat) frame = requestAnimationFrame(draw);
  });
  if (frame !== null) cancelAnimationFrame(frame);
  if (outcome?.error) message.error = outcome.error;
  else message.stats = timer.stats(outcome?.result, outcome?.stopped);
  if (message.versions) message.versions[message.v] = { content: message.content, stats: message.stats };
  touch(chat);
  saveNow();
  if (activeChat() === chat) {
    draw();
    const current = elementOf(message);
    if (current) current.classList.remove("streaming");
  }
  onChatsChanged();
}

export function initChat(chatsChanged) {
  onChatsChanged = chatsChanged;
  const input = $("input");
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    if (send(input.value)) {
      input.value = "";
      autoGrow(input);
      saveSoon();
    }
  });
  input.addEventListener("keydown", (e) => {
    // Enter while an input method is composing (Chinese pinyin) picks a candidate: never send then.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      if (!busy()) $("composer").requestSubmit();  // requestSubmit() would pass the disabled button by
    }
  });
  input.addEventListener("input", () => autoGrow(input));
  $("stop").addEventListener("click", stopGeneration);
  // Copy buttons of code blocks, rendered as HTML by the Markdown renderer.
  $("messages").addEventListener("click", async (e) => {
    const button = e.target.closest(".copy-code");
    if (!button) return;
    const code = button.closest(".code-block").querySelector("code").textContent;
    if (await copyText(code)) {
      button.textContent = t("copied");
      setTimeout(() => { button.textContent = t("copy"); }, 1500);
    }
  });
}
