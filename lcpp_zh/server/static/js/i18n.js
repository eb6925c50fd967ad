// The page's words in Chinese and English. The language follows the browser (navigator.languages) until
// the user picks one with the 中/EN button; the choice is kept in localStorage. One language at a time.

export const STRINGS = {
  zh: {
    chats: "对话列表", newChat: "新对话", close: "关闭", searchChats: "搜索对话…", export: "导出", import: "导入",
    modeChat: "聊天", modeDefault: "默认", modeNotebook: "笔记本", language: "切换语言 / Language",
    settings: "设置", inputPlaceholder: "输入消息，Enter 发送", inputHint: "Enter 发送，Shift+Enter 换行", send: "发送", stop: "停止",
    input: "输入", output: "输出", raw: "原文", defaultPlaceholder: "写下提示词，输出出现在右侧",
    generate: "生成", continue: "继续", notebookPlaceholder: "写下开头，模型接着写",
    models: "模型", template: "对话模板", templateDefault: "模型默认（{name}）", character: "角色",
    edit: "编辑", new: "新建", sampling: "采样参数", saveAs: "另存为", delete: "删除", random: "随机",
    loraHint: "LoRA 比例作用于整个服务器（所有用户）。", apply: "应用", advanced: "高级",
    stopStrings: "停止词（每行一个）", grammar: "GBNF 语法（可选）", cancel: "取消", ok: "确定",
    avatar: "头像（表情符号或图片）", image: "图片", name: "名字", persona: "人设（作为系统提示）",
    greeting: "开场白", charHint: "{{char}} 与 {{user}} 会被替换为角色名与“用户”。", save: "保存",
    untitled: "新对话", rename: "重命名", renamePrompt: "对话名称", confirmDeleteChat: "删除对话“{title}”？",
    confirmDeleteCharacter: "删除角色“{name}”？", copy: "复制", copied: "已复制", regenerate: "重新生成",
    saveAndSend: "保存并发送", user: "用户", statTokens: "{n} 个 token", statSpeed: "{v} token/秒",
    statPrompt: "提示 {n}", statTime: "{v} 秒", statFirst: "首字 {v} 秒", statStopped: "已停止",
    connecting: "连接中…", ready: "就绪", loading: "模型加载中…", generating: "生成中…", done: "完成", doneLength: "完成（达到 max_tokens）",
    stopped: "已停止", error: "出错：{msg}", cannotLoad: "无法加载模型：{msg}", presetSeed: "种子默认",
    presetPrecise: "精确", presetCreative: "创意", custom: "*", presetName: "预设名称",
    assistant: "助手", stateReady: "就绪", stateLoading: "加载中", stateRestarting: "重启中",
    stateFailed: "失败", ctx: "上下文 {n}", restarts: "已重启 {n} 次", imported: "已导入 {n} 个对话", importFailed: "导入失败：{msg}",
    storageFull: "浏览器存储已满：请导出并删除旧对话", loraApplied: "LoRA 比例已应用",
    noMatches: "没有匹配的对话", previous: "上一版", next: "下一版", emptyChat: "开始新的对话吧。",
    builtin: "内置", mine: "我的", preset: "采样预设", confirmDeletePreset: "删除预设“{name}”？",
    stateAvailable: "未加载", availableHint: "第一次请求时加载", loadingModel: "正在加载模型 {name}…",
    loraFailed: "无法读取 LoRA：{msg}", tooManyStops: "停止词最多 {n} 个", stopTooLong: "每个停止词最多 {n} 个字符",
    grammarTooLarge: "语法最多 {n} 字节",
  },
  en: {
    chats: "Chats", newChat: "New chat", close: "Close", searchChats: "Search chats…", export: "Export",
    import: "Import", modeChat: "Chat", modeDefault: "Default", modeNotebook: "Notebook",
    language: "切换语言 / Language", settings: "Settings",
    inputPlaceholder: "Message (Enter sends)", inputHint: "Enter sends, Shift+Enter adds a line", send: "Send", stop: "Stop",
    input: "Input", output: "Output", raw: "Raw", defaultPlaceholder: "Write a prompt; the output appears beside it",
    generate: "Generate", continue: "Continue", notebookPlaceholder: "Write the beginning; the model goes on",
    models: "Models", template: "Chat template", templateDefault: "Model default ({name})", character: "Character",
    edit: "Edit", new: "New", sampling: "Sampling", saveAs: "Save as", delete: "Delete", random: "random",
    loraHint: "LoRA scales apply to the whole server (every user).", apply: "Apply", advanced: "Advanced",
    stopStrings: "Stop strings (one a line)", grammar: "GBNF grammar (optional)", cancel: "Cancel", ok: "OK",
    avatar: "Avatar (emoji or picture)", image: "Picture", name: "Name", persona: "Persona (system prompt)",
    greeting: "Greeting", charHint: "{{char}} and {{user}} become the character's name and “User”.",
    save: "Save", untitled: "New chat", rename: "Rename", renamePrompt: "Chat name",
    confirmDeleteChat: "Delete the chat “{title}”?", confirmDeleteCharacter: "Delete the character “{name}”?",
    copy: "Copy", copied: "Copied", regenerate: "Regenerate", saveAndSend: "Save and send", user: "User",
    statTokens: "{n} tokens", statSpeed: "{v} tok/s", statPrompt: "prompt {n}", statTime: "{v} s",
    statFirst: "first token {v} s", statStopped: "stopped", connecting: "Connecting…", ready: "Ready",
    loading: "Loading models…", generating: "Generating…", done: "Done", doneLength: "Done (max_tokens reached)", stopped: "Stopped", error: "Error: {msg}",
    cannotLoad: "Cannot load models: {msg}", presetSeed: "Seed defaults", presetPrecise: "Precise",
    presetCreative: "Creative", custom: "*", presetName: "Preset name", assistant: "Assistant",
    stateReady: "ready", stateLoading: "loading", stateRestarting: "restarting", stateFailed: "failed",
    ctx: "context {n}", restarts: "restarted {n}×", imported: "Imported {n} chats", importFailed: "Import failed: {msg}",
    storageFull: "Browser storage is full: export and delete old chats", loraApplied: "LoRA scales applied",
    noMatches: "No matching chats", previous: "Previous version", next: "Next version",
    emptyChat: "Start a new conversation.", builtin: "Built in", mine: "Mine", preset: "Sampling preset",
    confirmDeletePreset: "Delete the preset “{name}”?", stateAvailable: "not loaded",
    availableHint: "loaded by the first request", loadingModel: "Loading model {name}…",
    loraFailed: "Cannot read the LoRA adapters: {msg}", tooManyStops: "At most {n} stop strings",
    stopTooLong: "A stop string may have at most {n} characters", grammarTooLarge: "A grammar may have at most {n} bytes",
  },
};

const LANG_KEY = "lcpp-zh:lang";
export let lang = "zh";
const listeners = [];

export function t(key, vars = {}) {
  const text = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

function browserLang() {
  const wanted = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const tag of wanted) {
    const base = String(tag || "").toLowerCase().split("-")[0];
    if (base === "zh" || base === "en") return base;
  }
  return "en";
}

export function initLang() {
  const saved = localStorage.getItem(LANG_KEY);
  lang = saved === "zh" || saved === "en" ? saved : browserLang();
  applyI18n();
}

export function toggleLang() {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem(LANG_KEY, lang);
  applyI18n();
  for (const listener of listeners) listener(lang);
}

export function onLangChange(listener) { listeners.push(listener); }

// Static text in the HTML carries data-i18n (text), data-i18n-placeholder, data-i18n-title, data-i18n-aria-label.
export function applyI18n(root = document) {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-title]")) {
    el.title = t(el.dataset.i18nTitle);
    el.setAttribute("aria-label", el.title);
  }
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  const button = document.getElementById("lang");
  if (button) button.textContent = lang === "zh" ? "EN" : "中";
}
