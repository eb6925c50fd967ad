// The server's HTTP API as the page uses it: JSON calls and OpenAI-style server-sent event streams.
// The API key (when the server has one) lives in sessionStorage only, so it is gone when the tab closes.

const KEY_STORE = "lcpp-zh-api-key";

export class HttpError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

export function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }
export function setApiKey(key) { sessionStorage.setItem(KEY_STORE, key.trim()); }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(response) {
  let message = response.statusText;
  try {
    const body = await response.json();
    message = body.error?.message || body.status || message;
  } catch { /* not JSON: keep the status text */ }
  return new HttpError(response.status, message);
}

export async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJson(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST a streaming request and call onChoice(choice) for each chunk's first choice.
// Returns {finish, usage}; throws HttpError, the stream's own error, or AbortError when `signal` fires.
export async function stream(path, body, signal, onChoice) {
  const response = await fetch(path, { method: "POST", headers: headers(), signal, body: JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  const result = { finish: null, usage: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return result;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split("\n\n");
    buffer = events.pop();  // the last event is not complete yet
    for (const event of events) {
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return result;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) result.usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        if (choice.finish_reason) result.finish = choice.finish_reason;
        onChoice(choice);
      }
    }
  }
}

// Timing of one generation, for the line under an answer: tokens, speed, prompt size, first-token delay.
export class Timer {
  constructor() { this.start = performance.now(); this.first = null; }
  mark() { if (this.first === null) this.first = performance.now(); }
  stats(result, stopped) {
    const end = performance.now();
    const stats = { seconds: (end - this.start) / 1000, stopped: Boolean(stopped) };
    if (this.first !== null) stats.ttft = (this.first - this.start) / 1000;
    const usage = result?.usage;
    if (usage) {
      stats.prompt_tokens = usage.prompt_tokens;
      stats.completion_tokens = usage.completion_tokens;
      // Speed over the generation itself: from the first token to the last, as llama-server reports it.
      const span = this.first !== null ? (end - this.first) / 1000 : stats.seconds;
      if (usage.completion_tokens > 1 && span > 0) stats.tps = (usage.completion_tokens - 1) / span;
    }
    if (result?.finish) stats.finish = result.finish;
    return stats;
  }
}
