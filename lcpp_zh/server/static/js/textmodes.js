// The raw-completion modes over /v1/completions: "default" (input and output side by side, as in
// text-generation-webui) and "notebook" (one text that the model continues in place).

import { stream, Timer } from "./api.js";
import { t } from "./i18n.js";
import { LiveMarkdown } from "./markdown.js";
import { isRunning } from "./chat.js";
import { samplingBody } from "./settings.js";
import { saveSoon, state } from "./store.js";
import { $, setStatus } from "./ui.js";

let controller = null;

function statsText(stats) {
  const parts = [];
  if (stats.completion_tokens !== undefined) parts.push(t("statTokens", { n: stats.completion_tokens }));
  if (stats.tps !== undefined) parts.push(t("statSpeed", { v: stats.tps.toFixed(1) }));
  parts.push(t("statTime", { v: stats.seconds.toFixed(1) }));
  if (stats.stopped) parts.push(t("statStopped"));
  return parts.join(" · ");
}

// Stream a completion of `prompt`, handing each text piece to onText; the stats go to statsId.
async function complete(prompt, onText, stopId, statsId) {
  if (controller || isRunning() || !prompt) return;
  controller = new AbortController();
  const buttons = ["default-generate", "default-continue", "notebook-generate", "send"];
  for (const id of buttons) $(id).disabled = true;
  $(stopId).disabled = false;
  setStatus("generating", {}, "busy");
  const timer = new Timer();
  let result = null;
  let stopped = false;
  try {
    const body = { ...samplingBody(), prompt, stream: true, stream_options: { include_usage: true } };
    result = await stream("/v1/completions", body, controller.signal, (choice) => {
      if (choice.text) { timer.mark(); onText(choice.text); }
    });
    setStatus(result.finish === "length" ? "doneLength" : "done", {}, "ok");
  } catch (err) {
    stopped = err.name === "AbortError";
    setStatus(stopped ? "stopped" : "error", { msg: err.message }, stopped ? "" : "error");
  } finally {
    $(statsId).textContent = statsText(timer.stats(result, stopped));
    controller = null;
    for (const id of buttons) $(id).disabled = false;
    $(stopId).disabled = true;
    saveSoon();
  }
}

function stop() { if (controller) controller.abort(); }

// ---- default mode ----
let markdownView = false;
let markdown = null;

function showOutput() {
  const text = state.texts.defaultOutput;
  $("default-output").textContent = text;
  $("default-output").hidden = markdownView;
  $("default-output-md").hidden = !markdownView;
  if (markdownView) {
    markdown = markdown || new LiveMarkdown($("default-output-md"));
    markdown.update(text);
  }
  $("default-raw").classList.toggle("active", !markdownView);
  $("default-md").classList.toggle("active", markdownView);
}

function generateDefault(continuing) {
  state.texts.defaultInput = $("default-input").value;
  const prompt = continuing ? state.texts.defaultInput + state.texts.defaultOutput : state.texts.defaultInput;
  if (!continuing) state.texts.defaultOutput = "";
  showOutput();
  let frame = null;
  complete(prompt, (piece) => {
    state.texts.defaultOutput += piece;
    if (frame === null) frame = requestAnimationFrame(() => { frame = null; showOutput(); });
  }, "default-stop", "default-stats").then(() => {
    if (frame !== null) cancelAnimationFrame(frame);
    showOutput();
  });
}

// ---- notebook mode ----
function generateNotebook() {
  const area = $("notebook-text");
  state.texts.notebook = area.value;
  complete(area.value, (piece) => {
    area.value += piece;
    state.texts.notebook = area.value;
    area.scrollTop = area.scrollHeight;
  }, "notebook-stop", "notebook-stats");
}

export function initTextModes() {
  $("default-input").value = state.texts.defaultInput || "";
  $("notebook-text").value = state.texts.notebook || "";
  showOutput();
  $("default-input").addEventListener("input", () => { state.texts.defaultInput = $("default-input").value; saveSoon(); });
  $("notebook-text").addEventListener("input", () => { state.texts.notebook = $("notebook-text").value; saveSoon(); });
  $("default-generate").addEventListener("click", () => generateDefault(false));
  $("default-continue").addEventListener("click", () => generateDefault(true));
  $("notebook-generate").addEventListener("click", generateNotebook);
  $("default-stop").addEventListener("click", stop);
  $("notebook-stop").addEventListener("click", stop);
  $("default-raw").addEventListener("click", () => { markdownView = false; showOutput(); });
  $("default-md").addEventListener("click", () => { markdownView = true; showOutput(); });
}
