// machado-lm playground: compare the models and look at attention. Plain JavaScript, no
// external assets; every request goes to this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], attention: null, layer: 0, head: 0 };

// API calls ---------------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem("machado-api-key");
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

class ApiError extends Error {}

async function readError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body.error) {
      message = body.error.message + (body.error.field ? ` (field: ${body.error.field})` : "");
    }
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) $("key-box").hidden = false;
  return new ApiError(message);
}

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  } catch (error) {
    throw new ApiError(`the server could not be reached (${error.message})`);
  }
  if (!response.ok) throw await readError(response);
  return response.json();
}

// Server-sent events over fetch (EventSource cannot POST): calls onEvent(name, data).
async function stream(path, body, onEvent) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw await readError(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

function showError(error) {
  $("error").textContent = error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; }

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Models and cards --------------------------------------------------------------------------
async function loadModels() {
  const { models } = await api("GET", "/models");
  state.models = models.filter((m) => m.status === "ready");
  const choices = $("model-choices");
  choices.replaceChildren();
  const attModel = $("att-model");
  attModel.replaceChildren();
  for (const m of state.models) {
    const label = el("label");
    const box = el("input", { type: "checkbox", value: m.name, checked: "" });
    label.append(box, document.createTextNode(` ${m.name}`));
    choices.append(label);
    if (m.has_attention) attModel.append(el("option", { value: m.name }, m.name));
  }
  fillLayerHead();
  renderCards(models);
}

function fillLayerHead() {
  const model = state.models.find((m) => m.name === $("att-model").value);
  const layers = model ? model.layers : 0;
  const heads = model ? model.heads : 0;
  const fill = (select, n) => {
    select.replaceChildren(...Array.from({ length: n }, (_, i) => el("option", { value: i }, String(i))));
  };
  fill($("att-layer"), layers);
  fill($("att-head"), heads);
}

function renderCards(models) {
  const list = $("card-list");
  list.replaceChildren();
  for (const m of models) {
    const card = el("div", { class: "card", id: `card-${m.name}` });
    card.append(el("h3", {}, m.name));
    if (m.status !== "ready") {
      card.append(el("p", {}, `failed to load: ${m.error}`));
      list.append(card);
      continue;
    }
    const rows = [
      ["kind", m.kind], ["parameters", `${(m.parameters / 1e6).toFixed(2)} M`],
      ["context", `${m.context} tokens`], ["runs on", m.provider],
      ["weights", m.precision === "int8" ? "int8, quantized at load (the metrics below are float32's)" : "float32"],
      ["generation", m.kv_cache ? "key/value cache: one position per token" : "full window per token"],
      ["files", m.files_checked ? "sizes and sha256 as the card records them, checked at load" : "not checked: the card records no checksums"],
    ];
    const t = m.training || {};
    if (t.hardware) rows.push(["trained on", t.hardware]);
    if (t.tokens_seen) rows.push(["tokens seen", `${(t.tokens_seen / 1e6).toFixed(1)} M in ${Math.round(t.training_seconds)} s`]);
    if (t.command) rows.push(["training command", t.command]);
    for (const [split, figures] of Object.entries(m.metrics || {})) {
      if (figures.bits_per_character !== undefined) {
        rows.push([`${split} BPC / PPL`, `${figures.bits_per_character.toFixed(3)} / ${figures.perplexity.toFixed(1)}`]);
      }
    }
    const table = el("table");
    for (const [k, v] of rows) {
      const tr = el("tr");
      tr.append(el("td", {}, k), el("td", {}, String(v)));
      table.append(tr);
    }
    card.append(table);
    list.append(card);
  }
}

// Comparison --------------------------------------------------------------------------------
function settings() {
  const num = (id) => Number($(id).value);
  return {
    max_new_tokens: num("max-new-tokens"), temperature: num("temperature"),
    top_k: num("top-k"), top_p: num("top-p"), seed: num("seed"),
    repetition_penalty: num("repetition-penalty"), frequency_penalty: num("frequency-penalty"),
  };
}

function surprisalColour(bits, max) {
  const t = Math.min(1, bits / Math.max(max, 1e-9));
  return `hsl(${Math.round(120 - 120 * t)}, 70%, ${Math.round(88 - 28 * t)}%)`;
}

function renderColumn(result, promptTokens, maxBits, reads) {
  const col = $(`col-${result.model}`);
  const bars = col.querySelector(".bars");
  bars.replaceChildren(el("div", { class: "meta" }, "next token"));
  const top = result.next_tokens[0] ? result.next_tokens[0].probability : 1;
  for (const c of result.next_tokens) {
    const row = el("div", { class: "bar" });
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(100 * c.probability) / top}%`;
    row.append(el("span", { class: "tok" }, JSON.stringify(c.token)), fill,
      el("span", {}, `${(100 * c.probability).toFixed(1)}%`));
    bars.append(row);
  }
  const line = col.querySelector(".surprisal");
  line.replaceChildren(el("div", { class: "meta" },
    `prompt surprisal, each token reading ${reads}: ${result.total_surprisal_bits.toFixed(1)} bits (greener is less surprised)`));
  result.surprisal_bits.forEach((bits, i) => {
    const span = el("span", { title: `${bits.toFixed(2)} bits` }, promptTokens[i]);
    span.style.background = surprisalColour(bits, maxBits);
    line.append(span);
  });
}

async function runCompare() {
  clearError();
  const names = [...document.querySelectorAll("#model-choices input:checked")].map((b) => b.value);
  if (!names.length) { showError(new ApiError("Choose at least one model.")); return; }
  const prompt = $("prompt").value;
  const params = settings();
  const results = $("results");
  results.replaceChildren();
  for (const name of names) {
    const col = el("div", { class: "panel model-col", id: `col-${name}` });
    const text = el("div", { class: "completion" });
    text.append(el("span", { class: "prompt" }, prompt), el("span", { class: "generated" }));
    col.append(el("h3", {}, name), text, el("div", { class: "meta status" }, "generating…"),
      el("div", { class: "bars" }), el("div", { class: "surprisal" }));
    results.append(col);
  }
  $("compare").disabled = true;
  try {
    const select = $("surprisal-window");
    const surprisalWindow = select.value;
    const reads = select.options[select.selectedIndex].text;
    const comparison = api("POST", "/compare", {
      prompt, models: names, ...params, max_new_tokens: 1, top_n: 8,
      ...(surprisalWindow ? { surprisal_window: Number(surprisalWindow) } : {}),
    });
    const streams = names.map((name) => stream("/generate", { model: name, prompt, ...params, stream: true }, (event, data) => {
      const col = $(`col-${name}`);
      if (event === "token") col.querySelector(".generated").textContent += data.text;
      else if (event === "done") col.querySelector(".status").textContent = `${data.finish_reason} · ${data.usage.completion_tokens} tokens · ${(data.seconds * 1000).toFixed(0)} ms`;
      else if (event === "error") showError(new ApiError(`${name}: ${data.error.message}`));
    }));
    const result = await comparison;
    const maxBits = Math.max(...result.results.flatMap((r) => r.surprisal_bits));
    for (const r of result.results) renderColumn(r, result.prompt_tokens, maxBits, reads);
    await Promise.all(streams);
  } catch (error) {
    showError(error);
  } finally {
    $("compare").disabled = false;
  }
}

// Attention ---------------------------------------------------------------------------------
function drawMatrix(canvas, matrix, highlight) {
  const n = matrix.length;
  canvas.width = n;
  canvas.height = n;
  canvas.dataset.size = String(n);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(n, n);
  for (let q = 0; q < n; q++) {
    for (let k = 0; k < n; k++) {
      const v = Math.sqrt(matrix[q][k]);
      const lit = highlight !== undefined && (q === highlight || k === highlight);
      const i = 4 * (q * n + k);
      image.data[i] = lit ? 255 : Math.round(255 - 133 * v);
      image.data[i + 1] = lit ? 200 - 150 * v : Math.round(255 - 209 * v);
      image.data[i + 2] = lit ? 0 : Math.round(255 - 224 * v);
      image.data[i + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

function showHead(layer, head, highlight) {
  state.layer = layer;
  state.head = head;
  $("att-layer").value = layer;
  $("att-head").value = head;
  const matrix = state.attention.attention[layer][head];
  drawMatrix($("heatmap"), matrix, highlight);
  $("heatmap").dataset.layer = String(layer);
  $("heatmap").dataset.head = String(head);
  document.querySelectorAll("#thumbs canvas").forEach((c) => {
    c.classList.toggle("selected", Number(c.dataset.layer) === layer && Number(c.dataset.head) === head);
  });
  const spans = document.querySelectorAll("#att-tokens span");
  spans.forEach((s) => { s.style.background = ""; });
  if (highlight !== undefined) {
    spans.forEach((s, k) => {
      const out = matrix[highlight][k];
      const inn = k < matrix.length ? matrix[k][highlight] : 0;
      const w = Math.max(out, inn);
      if (w > 0.02) s.style.background = `rgba(122, 46, 31, ${Math.min(0.85, w).toFixed(2)})`;
    });
  }
}

async function runAttention() {
  clearError();
  const model = $("att-model").value;
  if (!model) { showError(new ApiError("No model with attention is loaded.")); return; }
  try {
    state.attention = await api("POST", "/attention", { model, prompt: $("prompt").value });
  } catch (error) { showError(error); return; }
  const tokens = $("att-tokens");
  tokens.replaceChildren();
  state.attention.tokens.forEach((t, i) => {
    const span = el("span", { "data-index": i }, t);
    span.addEventListener("mouseenter", () => showHead(state.layer, state.head, i));
    span.addEventListener("mouseleave", () => showHead(state.layer, state.head));
    tokens.append(span);
  });
  const thumbs = $("thumbs");
  thumbs.replaceChildren();
  state.attention.attention.forEach((heads, layer) => heads.forEach((matrix, head) => {
    const canvas = el("canvas", { "data-layer": layer, "data-head": head, title: `layer ${layer}, head ${head}` });
    drawMatrix(canvas, matrix);
    canvas.addEventListener("click", () => showHead(layer, head));
    thumbs.append(canvas);
  }));
  showHead(Number($("att-layer").value) || 0, Number($("att-head").value) || 0);
}

// A/B experiment ----------------------------------------------------------------------------
function fixed(value, digits = 3) {
  return value === null || value === undefined ? "—" : value.toFixed(digits);
}

async function loadExperiment() {
  const report = await api("GET", "/ab");
  const table = $("experiment-arms");
  const head = el("tr");
  for (const name of ["arm", "requests", "rewards", "mean reward (95 % interval)", "latency p50", "errors"]) {
    head.append(el("th", { scope: "col" }, name));
  }
  table.replaceChildren(head);
  for (const [arm, figures] of Object.entries(report.arms)) {
    const r = figures.reward;
    const interval = r.low === null ? "" : ` (${fixed(r.low)} to ${fixed(r.high)})`;
    const tr = el("tr");
    tr.append(
      el("th", { scope: "row" }, arm + (arm === report.reference ? " (reference)" : "")),
      el("td", {}, String(figures.requests)),
      el("td", {}, String(r.n)),
      el("td", {}, `${fixed(r.mean)}${interval}`),
      el("td", {}, figures.latency_ms.p50 === null ? "—" : `${figures.latency_ms.p50.toFixed(1)} ms`),
      el("td", {}, String(figures.errors)),
    );
    table.append(tr);
  }
  const verdicts = $("experiment-verdicts");
  verdicts.replaceChildren(...Object.values(report.comparisons).map((c) => el("li", {}, c.verdict)));
  if (!Object.keys(report.comparisons).length) {
    verdicts.append(el("li", {}, "one arm only: nothing to compare"));
  }
}

// Wiring ------------------------------------------------------------------------------------
$("compare").addEventListener("click", runCompare);
$("refresh-experiment").addEventListener("click", () => loadExperiment().catch(showError));
$("show-attention").addEventListener("click", runAttention);
$("att-model").addEventListener("change", fillLayerHead);
for (const id of ["att-layer", "att-head"]) {
  $(id).addEventListener("change", () => {
    if (state.attention && state.attention.model === $("att-model").value) {
      showHead(Number($("att-layer").value), Number($("att-head").value));
    } else {
      runAttention();
    }
  });
}
$("save-key").addEventListener("click", () => {
  sessionStorage.setItem("machado-api-key", $("api-key").value);
  $("key-box").hidden = true;
  clearError();
  loadModels().catch(showError);
  loadExperiment().catch(showError);
});
loadModels().catch(showError);
loadExperiment().catch(() => {});  // a service without a record still serves the rest
