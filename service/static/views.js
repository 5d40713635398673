// The playground's drawings: the labelled attention heatmap, bertviz-style lines, the layers x
// heads grid, the loop version of attention, and the text coloured by which model found each
// token easier. No API calls here: app.js fetches, these draw.
const SVG = "http://www.w3.org/2000/svg";
// One colour per head (lines and toggles), distinguishable on white.
export const HEAD_COLOURS = [
  "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#e6730b", "#17becf",
  "#8c564b", "#e377c2", "#5f6b1d", "#393b79", "#7f7f7f", "#b8860b",
];

export function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Sets the one handler of `type` on `node`, replacing the one a previous drawing set.
function listen(node, type, handler) {
  node.handlers = node.handlers || {};
  if (node.handlers[type]) node.removeEventListener(type, node.handlers[type]);
  node.handlers[type] = handler;
  node.addEventListener(type, handler);
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A token as a label: spaces and line breaks made visible, long ones shortened.
export function shown(token, max = 14) {
  const text = token.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥") || "∅";
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

// A weight in [0, 1] as a colour from white to the page's accent; the square root lets small
// weights show.
export function ink(weight) {
  const t = Math.sqrt(Math.min(1, Math.max(0, weight)));
  return `rgb(${Math.round(255 - 133 * t)}, ${Math.round(255 - 209 * t)}, ${Math.round(255 - 224 * t)})`;
}

// The heatmap: one row per query (the token that reads), one column per key (the token read),
// each labelled by its token. Hover, or the arrow keys once it has focus, outline a cell's row
// and column (the weights stay visible) and name the pair in `readout`.
export function drawHeatmap(svg, tokens, matrix, readout) {
  const n = tokens.length;
  const cell = Math.max(12, Math.min(32, Math.floor(420 / n)));  // a few tokens: larger cells
  const chars = Math.max(3, ...tokens.map((t) => shown(t).length));
  const left = 12 + chars * 6.6;
  const top = 10 + chars * 5.8;  // labels at -60 degrees rise about sin(60) of their length
  const size = n * cell;
  svg.setAttribute("viewBox", `0 0 ${left + size + 4} ${top + size + 4}`);
  svg.style.maxWidth = `${Math.max(260, left + size + 4)}px`;
  svg.dataset.size = String(n);
  const grid = svgEl("g", { transform: `translate(${left}, ${top})` });
  for (let q = 0; q < n; q++) {
    for (let k = 0; k < n; k++) {
      const future = k > q;
      grid.append(svgEl("rect", {
        x: k * cell, y: q * cell, width: cell, height: cell, "data-q": q, "data-k": k,
        fill: future ? "#efefef" : ink(matrix[q][k]), class: future ? "cell future" : "cell",
      }));
    }
  }
  const rowLabels = svgEl("g", { class: "axis rows" });
  const colLabels = svgEl("g", { class: "axis cols" });
  tokens.forEach((token, i) => {
    rowLabels.append(svgEl("text", {
      x: left - 4, y: top + i * cell + cell * 0.72, "text-anchor": "end", "data-i": i, class: "row-label",
    }, shown(token)));
    const x = left + i * cell + cell * 0.7;
    colLabels.append(svgEl("text", {
      x, y: top - 4, transform: `rotate(-60 ${x} ${top - 4})`, "data-i": i, class: "col-label",
    }, shown(token)));
  });
  const rowBox = svgEl("rect", { class: "outline", width: size, height: cell, visibility: "hidden" });
  const colBox = svgEl("rect", { class: "outline", width: cell, height: size, visibility: "hidden" });
  grid.append(rowBox, colBox);
  const title = svgEl("text", { x: 2, y: 11, class: "axis-title" }, "query ↓  key →");
  svg.replaceChildren(title, rowLabels, colLabels, grid);
  let cursor = { q: n - 1, k: n - 1 };
  const focus = (q, k) => {
    cursor = { q, k };
    rowBox.setAttribute("y", q * cell);
    colBox.setAttribute("x", k * cell);
    rowBox.setAttribute("visibility", "visible");
    colBox.setAttribute("visibility", "visible");
    const weight = k > q ? "none (a query reads no later token)" : matrix[q][k].toFixed(3);
    readout.textContent = `query ${q} “${shown(tokens[q], 30)}” reads key ${k} “${shown(tokens[k], 30)}”: ${weight}`;
  };
  const clear = () => {
    rowBox.setAttribute("visibility", "hidden");
    colBox.setAttribute("visibility", "hidden");
  };
  svg.onmouseover = (event) => {
    const d = event.target.dataset;
    if (d.q !== undefined) focus(Number(d.q), Number(d.k));
    else if (d.i !== undefined) focus(Number(d.i), Number(d.i));
  };
  svg.onmouseleave = clear;
  svg.onblur = clear;
  svg.onfocus = () => focus(cursor.q, cursor.k);
  svg.onkeydown = (event) => {
    const move = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[event.key];
    if (!move) return;
    event.preventDefault();
    const clamp = (v) => Math.min(n - 1, Math.max(0, v));
    focus(clamp(cursor.q + move[0]), clamp(cursor.k + move[1]));
  };
}

// bertviz's head view: the tokens twice, queries left and keys right, a line from each query to
// each key it reads, as opaque as the weight, one colour per head shown. Hovering (or focusing)
// a token keeps only its lines.
export function drawLines(svg, tokens, heads, enabled) {
  const rowHeight = Math.max(16, Math.min(26, Math.floor(420 / tokens.length)));
  const n = tokens.length;
  const chars = Math.max(3, ...tokens.map((t) => shown(t).length));
  const labelWidth = 10 + chars * 7;
  const gap = 150;
  const width = 2 * labelWidth + gap;
  svg.setAttribute("viewBox", `0 0 ${width} ${n * rowHeight + 8}`);
  svg.style.maxWidth = `${width}px`;
  const y = (i) => 4 + i * rowHeight + rowHeight / 2;
  const lines = svgEl("g", { class: "lines" });
  for (const h of enabled) {
    heads[h].forEach((row, q) => row.forEach((w, k) => {
      if (k > q || w < 0.01) return;
      lines.append(svgEl("line", {
        x1: labelWidth + 4, y1: y(q), x2: labelWidth + gap - 4, y2: y(k),
        stroke: HEAD_COLOURS[h % HEAD_COLOURS.length], "stroke-opacity": w.toFixed(3),
        "stroke-width": 2, "data-q": q, "data-k": k, "data-head": h,
      }));
    }));
  }
  const labels = svgEl("g", { class: "axis" });
  tokens.forEach((token, i) => {
    for (const side of ["query", "key"]) {
      const left = side === "query";
      labels.append(svgEl("text", {
        x: left ? labelWidth : labelWidth + gap, y: y(i) + 4, "text-anchor": left ? "end" : "start",
        "data-side": side, "data-i": i, tabindex: 0, class: "line-token",
        "aria-label": `${side} ${i}: ${shown(token, 30)}`,
      }, shown(token)));
    }
  });
  svg.replaceChildren(lines, labels);
  const only = (side, i) => {
    svg.classList.add("focused");
    const attr = side === "query" ? "data-q" : "data-k";
    for (const line of lines.children) line.classList.toggle("on", line.getAttribute(attr) === String(i));
    for (const label of labels.children) {
      label.classList.toggle("on", label.dataset.side === side && label.dataset.i === String(i));
    }
  };
  const all = () => svg.classList.remove("focused");
  const pick = (event) => {
    const d = event.target.dataset;
    if (d.side) only(d.side, Number(d.i));
  };
  listen(svg, "mouseover", pick);
  listen(svg, "focusin", pick);
  listen(svg, "mouseleave", all);
  listen(svg, "focusout", all);
}

// A small heatmap in a canvas, one pixel a weight (the grid's thumbnails).
export function drawThumbnail(canvas, matrix) {
  const n = matrix.length;
  canvas.width = n;
  canvas.height = n;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(n, n);
  for (let q = 0; q < n; q++) {
    for (let k = 0; k < n; k++) {
      const t = Math.sqrt(matrix[q][k]);
      const i = 4 * (q * n + k);
      image.data[i] = Math.round(255 - 133 * t);
      image.data[i + 1] = Math.round(255 - 209 * t);
      image.data[i + 2] = Math.round(255 - 224 * t);
      image.data[i + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

// bertviz's model view: a row per layer, a column per head, each cell a thumbnail button.
export function drawGrid(container, attention, onPick) {
  const heads = attention[0].length;
  container.style.gridTemplateColumns = `max-content repeat(${heads}, minmax(0, 72px))`;
  const cells = [el("div", { class: "corner" }, "layer \\ head")];
  for (let h = 0; h < heads; h++) cells.push(el("div", { class: "col-head" }, `head ${h}`));
  attention.forEach((layerHeads, layer) => {
    cells.push(el("div", { class: "row-head" }, `layer ${layer}`));
    layerHeads.forEach((matrix, head) => {
      const button = el("button", {
        type: "button", class: "thumb", "data-layer": layer, "data-head": head,
        "aria-label": `layer ${layer}, head ${head}`, title: `layer ${layer}, head ${head}`,
      });
      const canvas = el("canvas", { "data-layer": layer, "data-head": head });
      drawThumbnail(canvas, matrix);
      button.append(canvas);
      button.addEventListener("click", () => onPick(layer, head));
      cells.push(button);
    });
  });
  container.replaceChildren(...cells);
}

// The course notebook's loop version of one head's attention: for each query, its dot product
// with each key up to it, scaled by 1/sqrt(head_dim), then a softmax, one number at a time.
export function loopAttention(queries, keys, head, headDim) {
  const n = queries.length;
  const from = head * headDim;
  const scale = 1 / Math.sqrt(headDim);
  const weights = [];
  for (let i = 0; i < n; i++) {
    const scores = [];
    for (let j = 0; j <= i; j++) {
      let dot = 0;
      for (let c = 0; c < headDim; c++) dot += queries[i][from + c] * keys[j][from + c];
      scores.push(dot * scale);
    }
    let top = -Infinity;
    for (const s of scores) top = Math.max(top, s);
    let total = 0;
    const exps = [];
    for (const s of scores) {
      exps.push(Math.exp(s - top));
      total += exps[exps.length - 1];
    }
    const row = [];
    for (let j = 0; j < n; j++) row.push(j <= i ? exps[j] / total : 0);
    weights.push(row);
  }
  return weights;
}

export function maxDifference(a, b) {
  let worst = 0;
  a.forEach((row, i) => row.forEach((v, j) => { worst = Math.max(worst, Math.abs(v - b[i][j])); }));
  return worst;
}

// The prompt coloured token by token by which of two models found it easier (surprisal in
// bits, -log2 p): A's colour where A was less surprised, B's where B was, deeper for a larger
// gap (full at 8 bits). Each token is a button: `onPick(i)` shows both distributions there.
export const EASIER = { a: [190, 60], b: [28, 85] };  // hue, saturation of each side

export function differenceColour(bitsA, bitsB) {
  const gap = bitsB - bitsA;  // > 0: A found it easier
  const [hue, sat] = gap >= 0 ? EASIER.a : EASIER.b;
  const depth = Math.min(1, Math.abs(gap) / 8);
  return `hsl(${hue}, ${sat}%, ${Math.round(96 - 34 * depth)}%)`;
}

export function drawDifference(container, tokens, bitsA, bitsB, names, onPick) {
  const spans = tokens.map((token, i) => {
    const gap = bitsB[i] - bitsA[i];
    const easier = gap >= 0 ? names[0] : names[1];
    const button = el("button", {
      type: "button", class: "diff-token", "data-index": i,
      "data-gap": gap.toFixed(4),
      "aria-label": `${shown(token, 30)}: ${names[0]} ${bitsA[i].toFixed(1)} bits, ${names[1]} ${bitsB[i].toFixed(1)} bits; ${easier} by ${Math.abs(gap).toFixed(1)}`,
      title: `${names[0]} ${bitsA[i].toFixed(2)} bits, ${names[1]} ${bitsB[i].toFixed(2)} bits`,
    }, token.replace(/\n/g, "⏎"));
    button.style.background = differenceColour(bitsA[i], bitsB[i]);
    button.addEventListener("click", () => onPick(i));
    return button;
  });
  container.replaceChildren(...spans);
}

// One model's likeliest tokens at a position as bars, the actual token marked (and added below
// the list when it is not among them).
export function distributionBars(title, top, actual, actualLogprob) {
  const box = el("div", { class: "dist" });
  box.append(el("h4", {}, title));
  const rows = Object.entries(top).sort((x, y) => y[1] - x[1]);
  const best = rows.length ? Math.exp(rows[0][1]) : 1;
  const bar = (token, logprob, mark) => {
    const p = Math.exp(logprob);
    const row = el("div", { class: mark ? "bar actual" : "bar" });
    const fill = el("div", { class: "fill" });
    fill.style.width = `${Math.min(100, (100 * p) / best)}%`;
    row.append(el("span", { class: "tok" }, JSON.stringify(token)), fill, el("span", {}, `${(100 * p).toFixed(1)}%`));
    return row;
  };
  for (const [token, logprob] of rows) box.append(bar(token, logprob, token === actual));
  if (!rows.some(([token]) => token === actual)) {
    box.append(el("div", { class: "meta" }, "the actual token, outside the list:"), bar(actual, actualLogprob, true));
  }
  return box;
}
