// The page's one generation at a time: chat, default and notebook modes share this state, so no second request
// starts while one streams (the Enter key included) and every mode's buttons show the same thing. It also says
// "loading model…" while a model that is not loaded yet is loaded by the server for the first request.

import { HttpError, stream } from "./api.js";
import { modelStatus, refreshModels } from "./settings.js";
import { $, setStatus } from "./ui.js";

const GENERATE_BUTTONS = ["default-generate", "default-continue", "notebook-generate"];
// While a model loads on demand, a server may answer 503 (busy loading) instead of holding the request:
// the page asks again this often, for at most this long, and keeps saying "loading model…" meanwhile.
const LOAD_RETRY_MS = 2000;
const LOAD_WAIT_MS = 10 * 60 * 1000;

let current = null;  // {mode, controller} while a generation streams

export function busy() { return current !== null; }

export function stopGeneration() { if (current) current.controller.abort(); }

function redraw() {
  const mode = current ? current.mode : null;
  $("send").hidden = mode === "chat";
  $("send").disabled = mode !== null;
  $("stop").hidden = mode !== "chat";
  for (const id of GENERATE_BUTTONS) $(id).disabled = mode !== null;
  $("default-stop").disabled = mode !== "default";
  $("notebook-stop").disabled = mode !== "notebook";
}

function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("stopped", "AbortError"));
    }, { once: true });
  });
}

async function streamLoading(path, body, signal, onChoice) {
  const until = Date.now() + LOAD_WAIT_MS;
  for (;;) {
    try {
      return await stream(path, body, signal, onChoice);
    } catch (err) {
      if (!(err instanceof HttpError && err.status === 503 && Date.now() < until)) throw err;
    }
    await pause(LOAD_RETRY_MS, signal);
  }
}

// Stream one request of `mode` ("chat", "default", "notebook"). makeBody() builds the request (it may throw
// a message for the user); onChoice gets each chunk's first choice. Returns {result, stopped, error}, or null
// when another generation is running.
export async function generate(mode, path, makeBody, onChoice) {
  if (current) return null;
  current = { mode, controller: new AbortController() };
  redraw();
  const outcome = { result: null, stopped: false, error: null };
  let cold = false;
  try {
    const body = makeBody();
    cold = modelStatus(body.model) !== "loaded";
    setStatus(cold ? "loadingModel" : "generating", { name: body.model || "" }, "busy");
    let first = cold;
    const signal = current.controller.signal;
    const fetcher = cold ? streamLoading : stream;
    outcome.result = await fetcher(path, body, signal, (choice) => {
      if (first) {
        first = false;
        setStatus("generating", {}, "busy");
      }
      onChoice(choice);
    });
    setStatus(outcome.result.finish === "length" ? "doneLength" : "done", {}, "ok");
  } catch (err) {
    outcome.stopped = err.name === "AbortError";
    if (!outcome.stopped) outcome.error = err.message;
    setStatus(outcome.stopped ? "stopped" : "error", { msg: err.message }, outcome.stopped ? "" : "error");
  } finally {
    current = null;
    redraw();
    if (cold) refreshModels();
  }
  return outcome;
}
