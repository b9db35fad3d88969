// The aogstream web console: the gateway's state, a chat playground, embeddings,
// text to speech, live transcription and the recent requests, all through the
// gateway's public HTTP and WebSocket API on this page's own origin.
//
// Keys: on loopback the gateway needs no key from a same-origin page. When it asks for
// one (a 401), the page shows a field for the management key, keeps it in this tab's
// sessionStorage only, and sends it as `Authorization: Bearer` (the gateway accepts the
// management key on the service routes too, beside its API keys). Browsers cannot add
// headers to a WebSocket: live transcription offers the key as the subprotocol
// `openai-insecure-api-key.<key>` beside `aogstream`, the one the gateway selects (it
// never echoes the key), as OpenAI's browser clients do on its realtime socket.

const BASE = "/aog/v0.2";
const REQUESTS = "/aogstream/v1/requests";
const KEY_STORE = "aogstream-console-key";

const $ = (id) => document.getElementById(id);

// ---- the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) {
    h.Authorization = `Bearer ${key}`;
  }
  return h;
}

/** The key a request was sent with ("" for none), so that a refusal of a request
 * sent before the person gave the key does not ask for it again. */
function keyOf(init) {
  const auth = (init.headers || {}).Authorization || "";
  return auth.startsWith("Bearer ") ? auth.slice(7) : "";
}

function explain(status, body) {
  if (body && typeof body === "object") {
    const err = body.error;
    return (err && (err.message || err)) || body.message || `HTTP ${status}`;
  }
  return `HTTP ${status}`;
}

/** A request whose JSON answer is returned; a failure raises ApiError with the
 * gateway's own message (and asks for the key on a 401). */
async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  return answer(resp, keyOf(init));
}

async function answer(resp, sentKey = "") {
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    if (resp.status === 401 && sentKey === (sessionStorage.getItem(KEY_STORE) || "")) {
      askForKey();
    }
    throw new ApiError(explain(resp.status, data), resp.status);
  }
  return data;
}

/** POST `body` and call `onEvent` with each `data: {json}` event of the SSE answer;
 * returns the response (its headers) once the stream ends. */
async function stream(path, body, onEvent, { signal, onStart } = {}) {
  const init = {
    method: "POST", signal,
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
  };
  const resp = await fetch(path, init);
  if (!resp.ok) {
    await answer(resp, keyOf(init));
  }
  if (onStart) {
    onStart(resp);
  }
  const type = resp.headers.get("content-type") || "";
  if (!type.startsWith("text/event-stream")) { // a provider that cannot stream
    onEvent(await resp.json());
    return resp;
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      break;
    }
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) {
          const data = line.slice(5).trim();
          if (data && data !== "[DONE]") {
            onEvent(JSON.parse(data));
          }
        }
      }
    }
  }
  return resp;
}

// ---- notices and the key --------------------------------------------------------------

function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = !text;
}

function askForKey() {
  $("key-form").hidden = false;
  notice("The gateway asks for its management key (the file management.key in its data " +
    "directory, or AOGSTREAM_MANAGEMENT_KEY), or for the services one of its API keys " +
    "(AOGSTREAM_API_KEYS). Enter it above; it stays in this tab only.");
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  if (key) {
    sessionStorage.setItem(KEY_STORE, key);
  } else {
    sessionStorage.removeItem(KEY_STORE);
  }
  $("key").value = "";
  notice("");
  refreshStatus();
});

// ---- small DOM helpers ----------------------------------------------------------------

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) {
    td.className = cls;
  }
  return td;
}

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }));
}

function stateClass(state) {
  return /^(running|serving|UP|downloaded)$/.test(state) ? "ok" :
    /^(failed|DOWN|error|stopped)/.test(state) ? "bad" : "";
}

function setOptions(select, values, keep = true) {
  const before = select.value;
  const first = select.options[0] && select.options[0].value === "" ? [select.options[0]] : [];
  select.replaceChildren(...first, ...values.map((v) => new Option(v, v)));
  if (keep && [...select.options].some((o) => o.value === before)) {
    select.value = before;
  }
}

// ---- status -----------------------------------------------------------------------------

let providers = [];

async function refreshStatus() {
  try {
    const [plugins, engines, services, provs, models, version] = await Promise.all([
      call("GET", `${BASE}/plugin/list`), call("GET", "/engine/health"),
      call("GET", `${BASE}/service`), call("GET", `${BASE}/service_provider`),
      call("GET", `${BASE}/model`), call("GET", "/version"),
    ]);
    $("version").textContent = `aogstream ${version.data.aogstream} · AOG ${version.data.version}`;
    fill("plugins", (plugins.data || []).map((p) => [
      cell(p.name), cell(p.type), cell(p.enabled ? p.state : "disabled", stateClass(p.state)),
      cell((p.services || []).join(", ")), cell(p.restarts, "num"),
    ]));
    fill("engines", Object.entries(engines.data || {}).map(([name, h]) => [
      cell(name), cell(h, stateClass(h)),
    ]));
    const svc = services.data || [];
    fill("services", svc.map((s) => [
      cell(s.service_name), cell(s.state, stateClass(s.state)), cell(s.hybrid_policy),
      cell(s.reason, "muted"),
    ]));
    const rows = models.data || [];
    fill("models", rows.map((m) => [
      cell(m.model_name), cell(m.service_name), cell(m.provider_name),
      cell(m.state && m.state !== m.status ? `${m.status} (${m.state})` : m.status,
        stateClass(m.status)),
      cell(m.is_default ? "yes" : ""),
    ]));
    providers = provs.data || [];
    const local = [...new Set(providers.filter((p) => p.service_source === "local")
      .map((p) => p.service_name))].sort();
    const chosen = $("pull-service").value; // empty until the first fill
    setOptions($("pull-service"), local);
    if (!chosen && local.length) {
      $("pull-service").value = local.includes("embed") ? "embed" : local[0];
    }
    pullProviders();
    const of = (service) => [...new Set(rows.filter((m) => m.service_name === service &&
      m.status === "downloaded").map((m) => m.model_name))];
    setOptions($("chat-model"), of("chat"));
    setOptions($("asr-model"), of("speech-to-text-ws"));
    document.body.dataset.loaded = "true";
  } catch (err) {
    if (err.status !== 401) { // a 401 has asked for the key already
      notice(`Could not read the gateway's state: ${err.message}`);
    }
  }
}

function pullProviders() {
  const service = $("pull-service").value;
  setOptions($("pull-provider"), providers.filter((p) => p.service_name === service &&
    p.service_source === "local").map((p) => p.provider_name));
}

$("refresh").addEventListener("click", refreshStatus);
$("pull-service").addEventListener("change", pullProviders);

// ---- pulling a model --------------------------------------------------------------------

let pulling = null; // the model name being pulled

function showPull(ev) {
  const bar = $("pull-progress");
  const status = String(ev.status || "");
  const total = Number(ev.total || 0);
  const done = Number(ev.completed || 0);
  bar.hidden = false;
  if (total > 0) {
    const pct = Math.min(100, (100 * done) / total);
    bar.value = pct;
    bar.dataset.completed = String(done);
    $("pull-status").textContent =
      `${status} ${pct.toFixed(1)}% (${(done / 1e6).toFixed(1)}/${(total / 1e6).toFixed(1)} MB)`;
  } else {
    $("pull-status").textContent = status;
  }
}

$("pull-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const model = $("pull-model").value.trim();
  const body = { model_name: model, service_name: $("pull-service").value,
    provider_name: $("pull-provider").value, service_source: "local" };
  pulling = model;
  $("pull").disabled = true;
  $("pull-cancel").disabled = false;
  $("pull-progress").value = 0;
  $("pull-status").textContent = `pulling ${model}…`;
  let outcome = "";
  try {
    await stream(`${BASE}/model/stream`, body, (ev) => {
      const status = String(ev.status || "");
      if (status === "error" || ev.error) {
        outcome = `failed: ${ev.data || ev.error}`;
      } else if (status === "canceled" || status === "success") {
        outcome = status;
      } else {
        showPull(ev);
      }
    });
    if (outcome === "success") {
      $("pull-progress").value = 100;
    }
    $("pull-status").textContent = `${model}: ${outcome || "the stream ended without an outcome"}`;
  } catch (err) {
    $("pull-status").textContent = `${model}: ${err.message}`;
  } finally {
    $("pull-status").dataset.outcome = outcome || "ended";
    pulling = null;
    $("pull").disabled = false;
    $("pull-cancel").disabled = true;
    refreshStatus();
  }
});

$("pull-cancel").addEventListener("click", async () => {
  if (!pulling) {
    return;
  }
  try {
    await call("POST", `${BASE}/model/stream/cancel`, { model_name: pulling });
  } catch (err) {
    $("pull-status").textContent = `cancel failed: ${err.message}`;
  }
});

// ---- chat ---------------------------------------------------------------------------------

const history = [];
let chatAbort = null;

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("chat-log").append(div);
  return div;
}

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || chatAbort) {
    return;
  }
  $("chat-input").value = "";
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.dataset.done = "false";
  const body = { messages: history, stream: true };
  const max = Number($("chat-max").value);
  if (max > 0) {
    body.max_tokens = max;
  }
  if ($("chat-model").value) {
    body.model = $("chat-model").value;
  }
  chatAbort = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  $("chat-provider").textContent = "…";
  $("chat-ttft").textContent = "…";
  $("chat-rate").textContent = "";
  const t0 = performance.now();
  let first = 0;
  let pieces = 0;
  let reply = "";
  try {
    await stream(`${BASE}/services/chat`, body, (ev) => {
      if (ev.finish_reason === "error" || ("business_code" in ev && "finished" in ev)) {
        throw new ApiError(ev.message || "the provider failed");
      }
      const piece = ev.message && typeof ev.message === "object" ? ev.message.content : "";
      if (piece) {
        if (!first) {
          first = performance.now();
          $("chat-ttft").textContent = `${Math.round(first - t0)} ms`;
        }
        pieces += 1;
        reply += piece;
        out.textContent = reply;
        out.dataset.pieces = String(pieces);
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
    }, {
      signal: chatAbort.signal,
      onStart: (resp) => {
        $("chat-provider").textContent = resp.headers.get("x-aogstream-provider") || "?";
      },
    });
    const secs = (performance.now() - (first || t0)) / 1000;
    $("chat-rate").textContent = `${pieces} chunks` +
      (pieces > 1 && secs > 0 ? `, ${(pieces / secs).toFixed(1)} chunks/s` : "");
  } catch (err) {
    if (err.name !== "AbortError") {
      chatAbort.abort(); // stop reading an answer that already failed
      out.classList.add("bad");
      out.textContent = reply + (reply ? "\n" : "") + `[${err.message}]`;
    }
  } finally {
    if (reply) {
      history.push({ role: "assistant", content: reply });
    }
    out.dataset.done = "true";
    chatAbort = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
});

$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("chat-form").requestSubmit();
  }
});
$("chat-stop").addEventListener("click", () => chatAbort && chatAbort.abort());
$("chat-clear").addEventListener("click", () => {
  history.length = 0;
  $("chat-log").replaceChildren();
});

// ---- embeddings ---------------------------------------------------------------------------

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

$("embed-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const texts = $("embed-input").value.split("\n").map((t) => t.trim()).filter(Boolean);
  $("embed-summary").textContent = "…";
  try {
    const t0 = performance.now();
    const r = await call("POST", `${BASE}/services/embed`, { input: texts });
    const vecs = r.data.map((d) => d.embedding);
    $("embed-summary").textContent = `${vecs.length} vectors of ${vecs[0].length} ` +
      `dimensions from ${r.model || "?"} in ${Math.round(performance.now() - t0)} ms; ` +
      "cosine similarity:";
    const head = $("embed-table").tHead;
    const tr = document.createElement("tr");
    tr.append(cell(""), ...texts.map((t, i) => cell(`#${i + 1}`)));
    head.replaceChildren(tr);
    fill("embed-table", vecs.map((v, i) => [
      cell(`#${i + 1} ${texts[i].slice(0, 40)}`),
      ...vecs.map((w) => cell(cosine(v, w).toFixed(3), "num")),
    ]));
  } catch (err) {
    $("embed-summary").textContent = err.message;
  }
});

// ---- text to speech ---------------------------------------------------------------------

let audioUrl = "";

$("tts-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("tts-input").value.trim();
  $("tts-status").textContent = "…";
  $("tts-speak").disabled = true;
  try {
    const t0 = performance.now();
    const init = {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ text, response_format: "wav" }),
    };
    const resp = await fetch(`${BASE}/services/text-to-speech`, init);
    if (!resp.ok) {
      await answer(resp, keyOf(init));
    }
    const blob = await resp.blob();
    const ms = Math.round(performance.now() - t0);
    if (audioUrl) {
      URL.revokeObjectURL(audioUrl);
    }
    audioUrl = URL.createObjectURL(blob);
    const audio = $("tts-audio");
    audio.src = audioUrl;
    const by = resp.headers.get("x-aogstream-provider") || "?";
    audio.addEventListener("loadedmetadata", () => {
      $("tts-status").textContent =
        `${audio.duration.toFixed(2)} s of audio from ${by} in ${ms} ms`;
    }, { once: true });
    audio.play().catch(() => {
      $("tts-status").textContent += " (press play)";
    });
  } catch (err) {
    $("tts-status").textContent = err.message;
  } finally {
    $("tts-speak").disabled = false;
  }
});

// ---- live transcription -------------------------------------------------------------------

const ASR_SERVICE = `${BASE}/services/speech-to-text-ws`;
const WS_SUBPROTOCOL = "aogstream"; // selected by the gateway when offered with a key
let mic = null; // {ws, ctx, media, node, started, sentMs}

function asrStatus(text) {
  $("asr-status").textContent = text;
}

function onAsrEvent(msg) {
  const header = msg.header || {};
  const button = $("mic");
  switch (header.event) {
    case "task-started":
      if (mic) {
        mic.started = true;
        for (const frame of mic.pending) {
          sendAudio(frame);
        }
        mic.pending = [];
      }
      asrStatus("listening…");
      break;
    case "result-generated": {
      const s = ((msg.payload || {}).output || {}).sentence || {};
      if (s.sentence_end) {
        const final = $("asr-final");
        final.textContent = `${final.textContent} ${s.text || ""}`.trim();
        $("asr-partial").textContent = "";
        final.dataset.sentences = String(Number(final.dataset.sentences || 0) + 1);
      } else {
        const partial = $("asr-partial");
        partial.textContent = s.text || "";
        partial.dataset.partials = String(Number(partial.dataset.partials || 0) + 1);
      }
      break;
    }
    case "task-finished":
      asrStatus("done");
      button.dataset.state = "finished";
      closeSocket();
      break;
    case "task-failed":
      asrStatus(`failed: ${header.error_message || header.error_code}`);
      button.dataset.state = "failed";
      stopCapture();
      closeSocket();
      break;
    default:
      break;
  }
}

function sendAudio(frame) {
  mic.ws.send(frame);
  mic.sentMs += (frame.byteLength / 2 / 16000) * 1000;
  $("mic").dataset.sentMs = String(Math.round(mic.sentMs));
}

async function startMic() {
  const button = $("mic");
  $("asr-final").textContent = "";
  $("asr-partial").textContent = "";
  delete $("asr-final").dataset.sentences;
  delete $("asr-partial").dataset.partials;
  button.dataset.sentMs = "0";
  button.dataset.state = "starting";
  asrStatus("asking for the microphone…");
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: {
      channelCount: 1, echoCancellation: false, noiseSuppression: false,
      autoGainControl: false } });
  } catch (err) {
    asrStatus(`no microphone: ${err.message}`);
    button.dataset.state = "failed";
    return;
  }
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/console/mic-worklet.js");
  const node = new AudioWorkletNode(ctx, "pcm16-capture");
  const source = ctx.createMediaStreamSource(media);
  source.connect(node);
  node.connect(ctx.destination); // keeps the graph pulling; the worklet outputs silence
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const key = sessionStorage.getItem(KEY_STORE) || "";
  const ws = new WebSocket(`${scheme}://${location.host}${ASR_SERVICE}`,
    key ? [WS_SUBPROTOCOL, `openai-insecure-api-key.${key}`] : []);
  ws.binaryType = "arraybuffer";
  mic = { ws, ctx, media, node, started: false, pending: [], sentMs: 0 };
  node.port.onmessage = (e) => {
    if (!mic || mic.ws !== ws || ws.readyState !== WebSocket.OPEN) {
      return;
    }
    if (mic.started) {
      sendAudio(e.data);
    } else {
      mic.pending.push(e.data);
    }
  };
  ws.addEventListener("open", () => {
    const run = { task: "speech-to-text-ws", action: "run-task",
      parameters: { format: "pcm", sample_rate: 16000, language: "en" } };
    if ($("asr-model").value) {
      run.model = $("asr-model").value;
    }
    ws.send(JSON.stringify(run));
    button.dataset.state = "recording";
    asrStatus("connected…");
  });
  ws.addEventListener("message", (e) => {
    if (typeof e.data === "string") {
      onAsrEvent(JSON.parse(e.data));
    }
  });
  ws.addEventListener("close", (e) => {
    const state = button.dataset.state;
    if (state === "starting") {
      // refused before it opened: the browser hides why, most likely a missing or
      // wrong key where the gateway requires API keys (AOGSTREAM_API_KEYS)
      asrStatus(`the gateway refused the socket (${e.code}); if it requires API keys, ` +
        (key ? "the key given is not one of them" : "enter one above and start again"));
      if (!key) {
        askForKey();
      }
      button.dataset.state = "failed";
    } else if (state === "recording" || state === "stopping") {
      asrStatus(`the gateway closed the socket (${e.code})`);
      button.dataset.state = "failed";
    }
    stopCapture();
    if (mic && mic.ws === ws) {
      mic = null; // the next click starts anew (a refused socket left it set)
    }
    setButton(false);
  });
  setButton(true);
}

function stopCapture() {
  if (!mic) {
    return;
  }
  mic.node.port.postMessage("stop");
  for (const track of mic.media.getTracks()) {
    track.stop();
  }
  mic.ctx.close().catch(() => {});
}

function closeSocket() {
  if (mic) {
    const { ws } = mic;
    mic = null;
    if (ws.readyState === WebSocket.OPEN) {
      ws.close(1000);
    }
  }
  setButton(false);
}

function stopMic() {
  if (!mic) {
    return;
  }
  stopCapture();
  $("mic").dataset.state = "stopping";
  asrStatus("finishing…");
  if (mic.ws.readyState === WebSocket.OPEN) {
    mic.ws.send(JSON.stringify({ task: "speech-to-text-ws", action: "finish-task" }));
  } else {
    closeSocket();
  }
}

function setButton(on) {
  const button = $("mic");
  button.setAttribute("aria-pressed", on ? "true" : "false");
  button.textContent = on ? "Stop" : "Start microphone";
}

$("mic").addEventListener("click", () => (mic ? stopMic() : startMic()));

// ---- recent requests ----------------------------------------------------------------------

let requestsTimer = 0;

async function refreshRequests() {
  try {
    const r = await call("GET", `${REQUESTS}?limit=50`);
    const servicesOnly = $("requests-services").checked;
    const list = (r.requests || []).filter((q) => !servicesOnly || q.service);
    fill("requests-table", list.map((q) => [
      cell(new Date(q.ts * 1000).toLocaleTimeString()), cell(q.method || q.kind),
      cell(q.path), cell(q.service), cell(q.model), cell(q.provider),
      cell(q.cancelled ? `${q.status} cancelled` : q.status,
        q.status >= 400 ? "bad" : ""),
      cell(q.ttfb_ms, "num"), cell(q.duration_ms, "num"), cell(q.bytes_out, "num"),
      cell(q.chunks || q.frames_out || "", "num"),
    ]));
    $("requests-note").textContent = list.length ? "" :
      "No requests yet (the console's own status calls are listed too).";
  } catch (err) {
    $("requests-note").textContent = `Recent requests unavailable: ${err.message}`;
  }
}

function scheduleRequests() {
  clearTimeout(requestsTimer);
  if ($("requests-live").checked && !document.hidden) {
    requestsTimer = setTimeout(async () => {
      await refreshRequests();
      scheduleRequests();
    }, 2000);
  }
}

$("requests-live").addEventListener("change", scheduleRequests);
$("requests-services").addEventListener("change", refreshRequests);
document.addEventListener("visibilitychange", scheduleRequests);

// ---- start ----------------------------------------------------------------------------

if (sessionStorage.getItem(KEY_STORE)) {
  $("key-form").hidden = false;
}
refreshStatus();
refreshRequests().then(scheduleRequests);
