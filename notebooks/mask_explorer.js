// The mask explorer's view (an anywidget ES module). It draws from the model's `data` alone, so
// the same code runs in a live notebook and in the static book, where MaskExplorer.static_html
// stands in for the model, with no widget manager. Layout of `data`: companion.explorer_data.
const GRID = 10;
const OFF = "#440154", ON = "#fde725";  // viridis ends, as the paper's mask figures

function el(tag, attrs = {}, parent = null) {
  const svg = ["svg", "rect", "line", "text", "g"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  if (parent) parent.appendChild(node);
  return node;
}

// Viridis at t in [0, 1], from five of its stops: the overlay's scale of inputs per cell.
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (STOPS.length - 1), i = Math.min(Math.floor(x), STOPS.length - 2);
  const rgb = STOPS[i].map((a, j) => Math.round(a + (STOPS[i + 1][j] - a) * (x - i)));
  return `rgb(${rgb.join(",")})`;
}

function decode(b64) {
  const raw = atob(b64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// companion._deflated: base64 of zlib, which the browser inflates itself ("deflate" is zlib's format).
async function inflate(b64) {
  const stream = new Blob([decode(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// companion._rows: each row's k inputs as ascending gaps, LEB128 varints.
function readRows(bytes, k) {
  const rows = [];
  for (let i = 0; i < bytes.length;) {
    const row = [];
    for (let j = 0, at = -1; j < k; j++) {
      let gap = 0, shift = 0, b;
      do { b = bytes[i++]; gap |= (b & 127) << shift; shift += 7; } while (b & 128);
      row.push(at += gap);
    }
    rows.push(row);
  }
  return rows;
}

// sparse_dqn.spatial_mask, rebuilt: the k inputs nearest the centre's grid location (every channel
// of a location equally near), ties to the lower flat index; ascending, as every row sent.
function spatialRow(centre, k, inputs) {
  const plane = GRID * GRID, r = Math.floor((centre % plane) / GRID), q = centre % GRID;
  const far = (i) => (Math.floor((i % plane) / GRID) - r) ** 2 + ((i % GRID) - q) ** 2;
  return Array.from({ length: inputs }, (_, i) => i)
    .sort((a, b) => far(a) - far(b) || a - b).slice(0, k).sort((a, b) => a - b);
}

// An entry of companion._entry, unpacked once: each unit's centre (or null) and inputs.
const unpacked = new WeakMap();
async function unpack(entry, inputs) {
  if (unpacked.has(entry)) return unpacked.get(entry);
  const centres = entry.centres === null ? null
    : entry.centres === "modulo" ? Array.from({ length: entry.units }, (_, u) => u % inputs)
    : Array.from(new Uint16Array((await inflate(entry.centres)).buffer));  // little-endian, as every browser
  let rowOf = (u) => u, rows = null, distinct = null;
  if (entry.row_of === "centre") {
    distinct = [...new Set(centres)].sort((a, b) => a - b);
    const index = new Map(distinct.map((c, i) => [c, i]));
    rowOf = (u) => index.get(centres[u]);
  }
  if (entry.rows === "spatial") rows = distinct.map((c) => spatialRow(c, entry.k, inputs));
  else if (entry.rows !== "dense") rows = readRows(await inflate(entry.rows), entry.k);
  const every = Array.from({ length: inputs }, (_, i) => i);
  const out = { centre: (u) => (centres ? centres[u] : null), inputs: (u) => (rows ? rows[rowOf(u)] : every) };
  unpacked.set(entry, out);
  return out;
}

function options(select, values, labels, chosen) {
  select.replaceChildren();
  values.forEach((v, i) => el("option", { value: v, text: labels ? labels[i] : v }, select));
  select.value = values.includes(chosen) ? chosen : values[0];
}

function panel(parent, title, cells, centre, label) {
  const box = el("figure", { class: "mx-panel" }, parent);
  const svg = el("svg", { viewBox: `0 0 ${GRID} ${GRID}`, role: "img", "aria-label": title }, box);
  cells.forEach((fill, d) => {
    const r = el("rect", { x: d % GRID, y: Math.floor(d / GRID), width: 0.96, height: 0.96, fill,
                           "data-cell": d }, svg);
    if (fill !== OFF) r.classList.add("on");
    if (label && label[d]) el("text", { x: (d % GRID) + 0.48, y: Math.floor(d / GRID) + 0.64, text: label[d],
                                        class: "mx-count" }, svg);
  });
  if (centre !== null) {
    const x = centre % GRID + 0.48, y = Math.floor(centre / GRID) + 0.48, s = 0.32;
    const g = el("g", { class: "mx-centre", "data-cell": centre }, svg);
    el("line", { x1: x - s, y1: y - s, x2: x + s, y2: y + s }, g);
    el("line", { x1: x - s, y1: y + s, x2: x + s, y2: y - s }, g);
  }
  el("figcaption", { text: title }, box);
}

function render({ model, el: root }) {
  root.classList.add("mask-explorer");
  const controls = el("div", { class: "mx-controls" }, root);
  const field = (name) => { const l = el("label", { text: name + " " }, controls); return l; };
  const game = el("select", { "aria-label": "game" }, field("game"));
  const arch = el("select", { "aria-label": "architecture" }, field("architecture"));
  const seed = el("select", { "aria-label": "seed" }, field("seed"));
  const unitLabel = field("unit");
  const unit = el("input", { type: "range", min: 0, value: 0, "aria-label": "unit" }, unitLabel);
  const unitNumber = el("input", { type: "number", min: 0, value: 0, "aria-label": "unit number" }, unitLabel);
  const channel = el("select", { "aria-label": "channel" }, field("channel"));
  const info = el("p", { class: "mx-info" }, root);
  const drawing = el("div", { class: "mx-drawing" }, root);

  function sync(start = {}) {
    const data = model.get("data");
    const envs = Object.keys(data);
    options(game, envs, null, start.env ?? game.value);
    const g = data[game.value];
    options(arch, Object.keys(g.archs), null, start.arch ?? arch.value);
    options(seed, g.archs[arch.value].seeds, null, String(start.seed ?? seed.value));
    options(channel, g.channels.map((_, i) => String(i)), g.channels, String(start.channel ?? channel.value));
    const entry = current();
    for (const input of [unit, unitNumber]) input.max = entry.units - 1;
    const u = Math.min(Number(start.unit ?? unit.value) || 0, entry.units - 1);
    unit.value = unitNumber.value = u;
    draw();
  }

  function current() {
    const a = model.get("data")[game.value].archs[arch.value];
    return a.masks[seed.value] ?? a.masks["*"];
  }

  let latest = 0;  // a newer draw supersedes one still unpacking its mask
  async function draw() {
    const g = model.get("data")[game.value], entry = current(), ticket = ++latest;
    const u = Math.max(0, Math.min(Number(unitNumber.value) || 0, entry.units - 1));
    unit.value = unitNumber.value = u;  // a unit past the last one is the last one
    const channels = g.channels.length, ch = Number(channel.value), plane = GRID * GRID;
    const mask = await unpack(entry, g.inputs);
    if (ticket !== latest) return;
    const inputs = mask.inputs(u), centre = mask.centre(u);
    const here = new Array(plane).fill(OFF), counts = new Array(plane).fill(0);
    for (const i of inputs) {
      if (Math.floor(i / plane) === ch) here[i % plane] = ON;
      counts[i % plane] += 1;
    }
    const overlay = counts.map((n) => n ? viridis(0.25 + 0.75 * n / channels) : OFF);
    drawing.replaceChildren();
    panel(drawing, `${g.channels[ch]} channel`, here,
          centre !== null && Math.floor(centre / plane) === ch ? centre % plane : null);
    panel(drawing, "all channels (inputs per cell)", overlay, centre !== null ? centre % plane : null,
          counts.map((n) => n ? String(n) : ""));
    const where = centre === null ? "no centre" :
      `centre: ${g.channels[Math.floor(centre / plane)]}, row ${Math.floor(centre % plane / GRID)}, column ${centre % GRID}`;
    const onChannel = inputs.filter((i) => Math.floor(i / plane) === ch).length;
    info.textContent = `${arch.value}, unit ${u} of ${entry.units}: ${inputs.length} inputs, ${onChannel} on this channel; ${where}`;
    root.dataset.inputs = inputs.join(",");  // for tests and for copying
    root.dataset.shown = [game.value, arch.value, seed.value, u, ch].join("|");
  }

  for (const select of [game, arch, seed]) select.addEventListener("change", () => sync());
  channel.addEventListener("change", draw);
  unit.addEventListener("input", () => { unitNumber.value = unit.value; draw(); });
  unitNumber.addEventListener("input", draw);
  model.on("change:data", () => sync(model.get("start")));
  sync(model.get("start"));
}

export default { render };
