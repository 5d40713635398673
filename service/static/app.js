// machado-lm playground: compare the models, look at attention, see where the models differ.
// Plain JavaScript modules, no external assets; every request goes to this server's own API.
import {
  HEAD_COLOURS, distributionBars, drawDifference, drawGrid, drawHeatmap, drawLines, el,
  loopAttention, maxDifference, shown,
} from "./views.js";

const $ = (id) => document.getElementById(id);
const state = { models: [], attention: null, layer: 0, head: 0, heads: new Set(), echo: null };

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

// Models and cards --------------------------------------------------------------------------
async function loadModels() {
  const { models } = await api("GET", "/models");
  state.models = models.filter((m) => m.status === "ready");
  const choices = $("model-choices");
  choices.replaceChildren();
  for (const m of state.models) {
    const label = el("label");
    const box = el("input", { type: "checkbox", value: m.name, checked: "" });
    label.append(box, document.createTextNode(` ${m.name}`));
    choices.append(label);
  }
  const names = (keep) => state.models.filter(keep).map((m) => m.name);
  fillModels($("att-model"), names((m) => m.has_attention), ["attention"]);
  fillModels($("lesson-model"), names((m) => m.attention_vectors), ["attention-seed"]);
  fillModels($("diff-a"), names(() => true), ["attention"]);
  fillModels($("diff-b"), names(() => true), ["bengio", "attention-seed"]);
  fillLayerHead($("att-model"), $("att-layer"), $("att-head"));
  fillLayerHead($("lesson-model"), $("lesson-layer"), $("lesson-head"));
  renderCards(models);
}

// The select's options, the first of `preferred` that is among them chosen.
function fillModels(select, names, preferred) {
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  const pick = preferred.find((n) => names.includes(n));
  if (pick) select.value = pick;
}

function fillLayerHead(modelSelect, layerSelect, headSelect) {
  const model = state.models.find((m) => m.name === modelSelect.value);
  const fill = (select, n, what) => {
    select.replaceChildren(...Array.from({ length: n }, (_, i) => el("option", { value: i }, `${what} ${i}`)));
  };
  fill(layerSelect, model ? model.layers : 0, "layer");
  fill(headSelect, model ? model.heads : 0, "head");
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

// The share of the completion's 4-grams of tokens that it already wrote: a completion caught in
// a loop scores high. Over 256 tokens (python -m bench generation, BENCHMARKS.md) Machado's own
// text scores under 1 %, sampled text about as much, greedy text 80 to 93 %.
function repeatedFourGrams(ids) {
  const seen = new Set();
  let repeats = 0;
  for (let i = 0; i + 4 <= ids.length; i++) {
    const gram = ids.slice(i, i + 4).join(",");
    if (seen.has(gram)) repeats++;
    seen.add(gram);
  }
  return ids.length >= 4 ? repeats / (ids.length - 3) : 0;
}

const REPEATS_WARN = 0.1;

function warnRepeats(col, ids, temperature) {
  const share = repeatedFourGrams(ids);
  if (share < REPEATS_WARN) return;
  const why = temperature === 0
    ? "temperature 0 always picks the likeliest token, and these models then loop"
    : "a higher temperature or a repetition penalty helps";
  col.append(el("p", { class: "warn repeats", role: "status" },
    `It repeats itself: ${Math.round(100 * share)} % of its 4-token sequences came earlier in it (${why}).`));
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
    const streams = names.map((name) => {
      const ids = [];
      return stream("/generate", { model: name, prompt, ...params, stream: true }, (event, data) => {
        const col = $(`col-${name}`);
        if (event === "token") {
          ids.push(data.id);
          col.querySelector(".generated").textContent += data.text;
        } else if (event === "done") {
          col.querySelector(".status").textContent = `${data.finish_reason} · ${data.usage.completion_tokens} tokens · ${(data.seconds * 1000).toFixed(0)} ms`;
          warnRepeats(col, ids, params.temperature);
        } else if (event === "error") showError(new ApiError(`${name}: ${data.error.message}`));
      });
    });
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
// Each view asks again when its inputs change; an answer that arrives after a newer question
// was asked is dropped (`latest`).
const latest = {};
function ticket(view) {
  latest[view] = (latest[view] || 0) + 1;
  return latest[view];
}

async function loadAttention() {
  const model = $("att-model").value;
  const prompt = $("prompt").value;
  if (!model || !prompt.trim()) return;
  const mine = ticket("attention");
  $("att-status").textContent = `reading the prompt with ${model}…`;
  let result;
  try {
    result = await api("POST", "/attention", { model, prompt });
  } catch (error) {
    if (mine === latest.attention) { $("att-status").textContent = ""; showError(error); }
    return;
  }
  if (mine !== latest.attention) return;
  state.attention = result;
  const heads = result.attention[0].length;
  state.heads = new Set(Array.from({ length: heads }, (_, h) => h));
  const toggles = $("line-heads");
  toggles.replaceChildren(el("legend", {}, "Heads shown"));
  for (let h = 0; h < heads; h++) {
    const label = el("label", { class: "head-toggle" });
    const box = el("input", { type: "checkbox", value: h, checked: "" });
    box.addEventListener("change", () => {
      if (box.checked) state.heads.add(h); else state.heads.delete(h);
      drawLayer();
    });
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = HEAD_COLOURS[h % HEAD_COLOURS.length];
    label.append(box, swatch, document.createTextNode(`head ${h}`));
    toggles.append(label);
  }
  drawGrid($("thumbs"), result.attention, (layer, head) => showHead(layer, head));
  const cut = result.truncated ? ` (its last ${result.tokens.length} tokens: the model reads no more)` : "";
  $("att-status").textContent = `${result.model}: ${result.tokens.length} tokens${cut}, ${result.attention.length} layers × ${heads} heads`;
  showHead(Math.min(Number($("att-layer").value) || 0, result.attention.length - 1),
    Math.min(Number($("att-head").value) || 0, heads - 1));
}

function drawLayer() {
  const a = state.attention;
  drawLines($("lines"), a.tokens, a.attention[state.layer], [...state.heads].sort());
}

function showHead(layer, head) {
  const a = state.attention;
  const changedLayer = layer !== state.layer || !$("lines").childElementCount;
  state.layer = layer;
  state.head = head;
  $("att-layer").value = layer;
  $("att-head").value = head;
  const svg = $("heatmap");
  drawHeatmap(svg, a.tokens, a.attention[layer][head], $("heatmap-readout"));
  svg.dataset.layer = String(layer);
  svg.dataset.head = String(head);
  svg.setAttribute("aria-label", `attention heatmap of layer ${layer}, head ${head}: ${a.tokens.length} queries by ${a.tokens.length} keys`);
  $("heatmap-readout").textContent = `layer ${layer}, head ${head}`;
  document.querySelectorAll("#thumbs .thumb").forEach((b) => {
    const on = Number(b.dataset.layer) === layer && Number(b.dataset.head) === head;
    b.classList.toggle("selected", on);
    b.setAttribute("aria-pressed", String(on));
  });
  if (changedLayer) drawLayer();
}

// Where the models differ ---------------------------------------------------------------------
// Both models score the prompt through /v1/completions with echo: each token's log-probability
// and the five likeliest tokens at its position.
async function echo(model, prompt) {
  const answer = await api("POST", "/v1/completions", { model, prompt, max_tokens: 0, echo: true, logprobs: 5 });
  return answer.choices[0].logprobs;
}

const BITS = 1 / Math.log(2);

async function loadDifference() {
  const a = $("diff-a").value;
  const b = $("diff-b").value;
  const prompt = $("prompt").value;
  if (!a || !b || !prompt.trim()) return;
  $("legend-a").textContent = a;
  $("legend-b").textContent = b;
  const mine = ticket("differ");
  let scored;
  try {
    scored = await Promise.all([echo(a, prompt), echo(b, prompt)]);
  } catch (error) {
    if (mine === latest.differ) showError(error);
    return;
  }
  if (mine !== latest.differ) return;
  const [la, lb] = scored;
  if (la.tokens.join("\u0000") !== lb.tokens.join("\u0000")) {
    $("diff-totals").textContent = `${a} and ${b} split the prompt into different tokens: nothing to compare token by token`;
    $("diff-text").replaceChildren();
    return;
  }
  const bitsA = la.token_logprobs.map((lp) => -lp * BITS);
  const bitsB = lb.token_logprobs.map((lp) => -lp * BITS);
  const sum = (xs) => xs.reduce((x, y) => x + y, 0);
  const totalA = sum(bitsA);
  const totalB = sum(bitsB);
  const winsA = bitsA.filter((v, i) => v < bitsB[i]).length;
  const better = totalA <= totalB ? a : b;
  $("diff-totals").textContent = `${a}: ${totalA.toFixed(1)} bits · ${b}: ${totalB.toFixed(1)} bits · `
    + `${better} found the prompt ${Math.abs(totalA - totalB).toFixed(1)} bits easier; `
    + `${a} was less surprised on ${winsA} of ${bitsA.length} tokens, ${b} on ${bitsA.length - winsA}`;
  state.echo = { names: [a, b], logprobs: [la, lb] };
  drawDifference($("diff-text"), la.tokens, bitsA, bitsB, [a, b], showDistributions);
  showDistributions(bitsA.length - 1);
}

function showDistributions(i) {
  const { names, logprobs } = state.echo;
  const token = logprobs[0].tokens[i];
  document.querySelectorAll("#diff-text .diff-token").forEach((t) => {
    t.classList.toggle("selected", Number(t.dataset.index) === i);
    t.setAttribute("aria-pressed", String(Number(t.dataset.index) === i));
  });
  const box = $("diff-token");
  const heading = el("p", { class: "meta" }, `token ${i}, ${JSON.stringify(token)}: what each model expected there`);
  const columns = el("div", { class: "dist-columns" });
  names.forEach((name, m) => {
    const lp = logprobs[m].token_logprobs[i];
    columns.append(distributionBars(`${name}: ${(-lp * BITS).toFixed(2)} bits`, logprobs[m].top_logprobs[i], token, lp));
  });
  box.replaceChildren(heading, columns);
}

// Loops and matrices ---------------------------------------------------------------------------
async function loadLesson() {
  const model = $("lesson-model").value;
  const prompt = $("prompt").value;
  if (!model || !prompt.trim()) return;
  const layer = Number($("lesson-layer").value) || 0;
  const head = Number($("lesson-head").value) || 0;
  const mine = ticket("lesson");
  let result;
  try {
    result = await api("POST", "/attention", { model, prompt, layer, head, vectors: true });
  } catch (error) {
    if (mine === latest.lesson) showError(error);
    return;
  }
  if (mine !== latest.lesson) return;
  const matrix = result.attention[0][0];
  const started = performance.now();
  const loops = loopAttention(result.queries[0], result.keys[0], head, result.head_dim);
  const ms = performance.now() - started;
  drawHeatmap($("loop-map"), result.tokens, loops, $("lesson-readout"));
  drawHeatmap($("matrix-map"), result.tokens, matrix, $("lesson-readout"));
  const worst = maxDifference(loops, matrix);
  const verdict = $("lesson-difference");
  verdict.dataset.difference = String(worst);
  verdict.textContent = `${model}, layer ${layer}, head ${head}, ${result.tokens.length} tokens `
    + `(head width ${result.head_dim}): largest difference between the two ${worst.toExponential(1)} `
    + `(${worst < 1e-5 ? "the same weights, to float32 rounding" : "they differ!"}); the loops took ${ms.toFixed(1)} ms here.`;
  $("lesson-readout").textContent = "";
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
let typing;
function promptChanged() {
  clearTimeout(typing);
  typing = setTimeout(() => { loadAttention(); loadDifference(); loadLesson(); }, 500);
}

function temperatureNote() {
  const greedy = Number($("temperature").value) === 0;
  $("temperature-note").hidden = !greedy;
}

$("compare").addEventListener("click", runCompare);
$("prompt").addEventListener("input", promptChanged);
$("temperature").addEventListener("input", temperatureNote);
$("refresh-experiment").addEventListener("click", () => loadExperiment().catch(showError));
$("att-model").addEventListener("change", () => {
  fillLayerHead($("att-model"), $("att-layer"), $("att-head"));
  loadAttention();
});
for (const id of ["att-layer", "att-head"]) {
  $(id).addEventListener("change", () => {
    if (state.attention) showHead(Number($("att-layer").value), Number($("att-head").value));
  });
}
$("lesson-model").addEventListener("change", () => {
  fillLayerHead($("lesson-model"), $("lesson-layer"), $("lesson-head"));
  loadLesson();
});
for (const id of ["lesson-layer", "lesson-head"]) $(id).addEventListener("change", loadLesson);
for (const id of ["diff-a", "diff-b"]) $(id).addEventListener("change", loadDifference);
$("loop-code").textContent = loopAttention.toString();
$("save-key").addEventListener("click", () => {
  sessionStorage.setItem("machado-api-key", $("api-key").value);
  $("key-box").hidden = true;
  clearError();
  start();
  loadExperiment().catch(showError);
});

async function start() {
  try {
    await loadModels();
  } catch (error) {
    showError(error);
    return;
  }
  loadAttention();
  loadDifference();
  loadLesson();
}

temperatureNote();
start();
loadExperiment().catch(() => {});  // a service without a record still serves the rest
