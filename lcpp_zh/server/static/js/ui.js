// Small page helpers: icons, the ask/confirm dialog, toasts, drawers on narrow screens, clipboard copy.

import { t } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

const PATHS = {
  copy: "M9 9h11v11H9zM5 15H4V4h11v1",
  edit: "M4 20h4L19 9l-4-4L4 16zM13 7l4 4",
  regenerate: "M20 12a8 8 0 1 1-2.34-5.66M20 4v5h-5",
  delete: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13",
  previous: "M15 6l-6 6 6 6",
  next: "M9 6l6 6-6 6",
  rename: "M4 20h16M6 16l9-9 3 3-9 9H6z",
  menu: "M3 6h18M3 12h18M3 18h18",
  settings: "M4 6h9M17 6h3M4 12h3M11 12h9M4 18h11M19 18h1M15 4v4M9 10v4M17 16v4",
  close: "M6 6l12 12M18 6L6 18",
};

export function icon(name) {
  return `<svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true" fill="none" stroke="currentColor" `
    + `stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="${PATHS[name]}"/></svg>`;
}

export function iconButton(name, titleKey, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `icon small act-${name}`;
  button.innerHTML = icon(name);
  button.title = t(titleKey);
  button.setAttribute("aria-label", button.title);
  button.addEventListener("click", onClick);
  return button;
}

// ---- dialogs: ask(message, {value}) resolves to the text typed (or true), or null when cancelled ----
export function ask(message, { value = null } = {}) {
  const dialog = $("ask-dialog");
  const input = $("ask-input");
  $("ask-message").textContent = message;
  input.hidden = value === null;
  input.value = value ?? "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const ok = dialog.returnValue === "ok";
      resolve(ok ? (value === null ? true : input.value.trim()) : null);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    (value === null ? $("ask-ok") : input).focus();
    if (value !== null) input.select();
  });
}

let toastTimer = null;
export function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 3000);
}

// ---- drawers: on narrow screens the chat list and the settings slide over the conversation ----
const NARROW = matchMedia("(max-width: 1099px)");

export function isNarrow() { return NARROW.matches; }

export function openDrawer(id) {
  for (const drawer of document.querySelectorAll(".drawer")) drawer.classList.toggle("open", drawer.id === id);
  if (isNarrow()) {
    $("backdrop").hidden = false;
    const first = $(id).querySelector("input, select, button");
    if (first) first.focus({ preventScroll: true });
  } else if (id === "settings") {
    document.body.classList.remove("settings-hidden");
  }
}

export function closeDrawers() {
  for (const drawer of document.querySelectorAll(".drawer")) drawer.classList.remove("open");
  $("backdrop").hidden = true;
}

export function toggleSettings() {
  if (isNarrow()) {
    if ($("settings").classList.contains("open")) closeDrawers();
    else openDrawer("settings");
  } else {
    document.body.classList.toggle("settings-hidden");
  }
}

export function initDrawers() {
  $("open-chats").innerHTML = icon("menu");
  $("open-settings").innerHTML = icon("settings");
  for (const button of document.querySelectorAll("[data-close-drawer]")) {
    button.innerHTML = icon("close");
    button.addEventListener("click", () => {
      if (isNarrow()) closeDrawers();
      else if (button.closest("#settings")) document.body.classList.add("settings-hidden");
    });
  }
  $("open-chats").addEventListener("click", () => openDrawer("chats"));
  $("open-settings").addEventListener("click", toggleSettings);
  $("backdrop").addEventListener("click", closeDrawers);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("backdrop").hidden) closeDrawers(); });
  NARROW.addEventListener("change", closeDrawers);
}

// ---- clipboard: the async API needs a secure context; a phone on http://192.168.x.y is not one ----
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch { /* fall back below */ }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { ok = false; }
  area.remove();
  return ok;
}

export function flash(button, key = "copied") {
  const old = button.title;
  button.classList.add("done");
  button.title = t(key);
  setTimeout(() => { button.classList.remove("done"); button.title = old; }, 1500);
}

// The status line in the header, kept as a message key so that switching the language rewrites it.
let lastStatus = ["connecting", {}, ""];
export function setStatus(key, vars = {}, kind = "") {
  lastStatus = [key, vars, kind];
  const el = $("status");
  el.textContent = t(key, vars);
  el.title = el.textContent;
  el.dataset.kind = kind;
}

export function redrawStatus() { setStatus(...lastStatus); }

export function autoGrow(area, max = 0.4) {
  area.style.height = "auto";
  area.style.height = `${Math.min(area.scrollHeight + 2, Math.round(innerHeight * max))}px`;
}
