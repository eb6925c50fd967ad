// The raw-completion modes over /v1/completions: "default" (input and output side by side, as in
// text-generation-webui) and "notebook" (one text that the model continues in place).

import { Timer } from "./api.js";
import { busy, generate, stopGeneration } from "./generation.js";
import { t } from "./i18n.js";
import { LiveMarkdown } from "./markdown.js";
import { samplingBody } from "./settings.js";
import { saveSoon, state } from "./store.js";
import { $ } from "./ui.js";

function statsText(stats) {
  const parts = [];
  if (stats.completion_tokens !== undefined) parts.push(t("statTokens", { n: stats.completion_tokens }));
  if (stats.tps !== undefined) parts.push(t("statSpeed", { v: stats.tps.toFixed(1) }));
  parts.push(t("statTime", { v: stats.seconds.toFixed(1) }));
  if (stats.stopped) parts.push(t("statStopped"));
  return parts.join(" · ");
}

// Stream a completion of `prompt` in `mode`, handing each text piece to onText; the stats go to statsId.
async function complete(mode, prompt, onText, statsId) {
  const timer = new Timer();
  const makeBody = () => ({ ...samplingBody(), prompt, stream: true, stream_options: { include_usage: true } });
  const outcome = await generate(mode, "/v1/completions", makeBody, (choice) => {
    if (choice.text) { timer.mark(); onText(choice.text); }
  });
  if (outcome) $(statsId).textContent = outcome.error ? "" : statsText(timer.stats(outcome.result, outcome.stopped));
  saveSoon();
}

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
  if (busy()) return;
  state.texts.defaultInput = $("default-input").value;
  const prompt = continuing ? state.texts.defaultInput + state.texts.defaultOutput : state.texts.defaultInput;
  if (!prompt) return;
  if (!continuing) state.texts.defaultOutput = "";
  showOutput();
  let frame = null;
  complete("default", prompt, (piece) => {
    state.texts.defaultOutput += piece;
    if (frame === null) frame = requestAnimationFrame(() => { frame = null; showOutput(); });
  }, "default-stats").then(() => {
    if (frame !== null) cancelAnimationFrame(frame);
    showOutput();
  });
}

// ---- notebook mode ----
function generateNotebook() {
  const area = $("notebook-text");
  if (busy() || !area.value) return;
  state.texts.notebook = area.value;
  complete("notebook", area.value, (piece) => {
    area.value += piece;
    state.texts.notebook = area.value;
    area.scrollTop = area.scrollHeight;
  }, "notebook-stats");
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
  $("default-stop").addEventListener("click", stopGeneration);
  $("notebook-stop").addEventListener("click", stopGeneration);
  $("default-raw").addEventListener("click", () => { markdownView = false; showOutput(); });
  $("default-md").addEventListener("click", () => { markdownView = true; showOutput(); });
}
