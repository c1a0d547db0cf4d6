// saebench static board: lays out the data each page embeds (docs/web.md).
// Every number and text arrives formatted from Python; this script sorts by the stored values,
// filters and draws. Untrusted text (names, explanations, tokens) is only ever set as
// textContent or an attribute value, never parsed as HTML.
"use strict";

const DATA = JSON.parse(document.getElementById("page-data").textContent);
const ROOT = document.body.dataset.root || "";
const APP = document.getElementById("app");
const TIP = document.getElementById("tooltip");
const SVGNS = "http://www.w3.org/2000/svg";
const ARCH_COLOURS = { relu: "#1f77b4", topk: "#ff7f0e", batchtopk: "#2ca02c", jumprelu: "#d62728", gated: "#9467bd", baseline: "#8c8c8c" };
const MORE_COLOURS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function colour(arch) {
  if (ARCH_COLOURS[arch]) return ARCH_COLOURS[arch];
  let h = 0;
  for (const ch of String(arch)) h = (h + ch.charCodeAt(0)) % MORE_COLOURS.length;
  return MORE_COLOURS[h];
}

function showTip(evt, lines) {
  TIP.replaceChildren(...lines.map((l, i) => el(i ? "div" : "strong", {}, l)));
  TIP.hidden = false;
  TIP.style.left = evt.pageX + 12 + "px";
  TIP.style.top = evt.pageY + 12 + "px";
}
function hideTip() { TIP.hidden = true; }

function saeHref(page) { return ROOT + "sae/" + encodeURIComponent(page) + ".html"; }
function latentsHref(page, id) {
  return ROOT + "latents/" + encodeURIComponent(page) + ".html" + (id === undefined ? "" : "#" + id);
}

// ---- sortable tables -------------------------------------------------------------------------
// columns: [{label, help, key(row) -> sort value, cell(row) -> Node|string}]
function sortableTable(columns, rows, opts) {
  const o = opts || {};
  const table = el("table", { class: "data" + (o.cls ? " " + o.cls : "") });
  const tbody = el("tbody");
  let order = rows.slice(), sortCol = -1, asc = true;
  const ths = columns.map((c, i) => el("th", { title: c.help || null, "data-col": i, tabindex: 0,
    on: { click: () => sortBy(i), keydown: (e) => { if (e.key === "Enter") sortBy(i); } } }, c.label));
  table.append(el("thead", {}, el("tr", {}, ths)), tbody);
  function cmp(a, b) {
    const ka = columns[sortCol].key(a), kb = columns[sortCol].key(b);
    const na = ka === null || ka === undefined || ka === "", nb = kb === null || kb === undefined || kb === "";
    if (na || nb) return na === nb ? 0 : na ? 1 : -1; // blanks last either way
    const r = typeof ka === "number" && typeof kb === "number" ? ka - kb : String(ka).localeCompare(String(kb));
    return asc ? r : -r;
  }
  function sortBy(i) {
    asc = sortCol === i ? !asc : true;
    sortCol = i;
    order = rows.slice().sort(cmp);
    ths.forEach((th, j) => th.setAttribute("aria-sort", j === i ? (asc ? "ascending" : "descending") : "none"));
    draw();
  }
  const caption = el("caption", { hidden: "" });
  table.prepend(caption);
  function draw() {
    const shown = o.visible ? order.filter(o.visible) : order;
    const limit = o.limit || Infinity;
    caption.hidden = shown.length <= limit;
    caption.textContent = `showing ${limit} of ${shown.length} rows: search or sort to see others`;
    tbody.replaceChildren(...shown.slice(0, limit).map((r) =>
      el("tr", { "data-sae": r.sae || null, class: r.baseline ? "baseline" : null }, columns.map((c) => el("td", {}, c.cell(r))))));
  }
  table.redraw = draw;
  draw();
  return table;
}

const VERDICT = { "ranks architectures": "●", "separates only large differences": "◐", "cannot rank at this profile": "○" };

// a board cell: bold when the SAE is the best of its column (★) or not distinguishable from it (b: 2 / 1)
function markedCell(c) {
  if (!c.b) return c.t;
  return el("span", { class: "mark" }, el("strong", {}, c.t), c.b === 2 ? el("span", { class: "best", title: "best of the column" }, " ★") : null);
}

function metricColumns(columns) {
  return columns.map((c, i) => ({ label: c.label + (c.verdict ? " " + VERDICT[c.verdict] : ""), help: c.help, key: (r) => r.cells[i].v,
    cell: (r) => markedCell(r.cells[i]) }));
}

// ---- the board -------------------------------------------------------------------------------
function uniq(xs) { return [...new Set(xs)].sort((a, b) => (typeof a === "number" ? a - b : String(a).localeCompare(String(b)))); }

function filterBar(sections, onChange) {
  const saes = sections.flatMap((s) => s.saes);
  const state = { architecture: "", d_sae: "", model: "", hook: "" };
  const opts = { architecture: uniq(saes.map((s) => s.architecture)), d_sae: uniq(saes.map((s) => s.d_sae)),
    model: uniq(sections.map((s) => s.model)), hook: uniq(sections.map((s) => s.hook)) };
  const names = { architecture: "architecture", d_sae: "width (d_sae)", model: "model", hook: "hook" };
  const bar = el("div", { class: "filters" });
  for (const k of Object.keys(state)) {
    const sel = el("select", { id: "filter-" + k, on: { change: (e) => { state[k] = e.target.value; onChange(state); } } },
      el("option", { value: "" }, "all"), opts[k].map((v) => el("option", { value: v }, v)));
    bar.append(el("label", {}, names[k] + " ", sel));
  }
  return [bar, state];
}

function renderBoard() {
  APP.append(el("h1", {}, DATA.title));
  APP.append(el("p", {}, `Built by saebench leaderboard --html from ${DATA.n_results} result file(s). ` +
    "Arrows mark the better direction; a ± b is a value and the half-width of its 95% interval, a [lo, hi] the ends " +
    "of an asymmetric one, a (n=k) a value with too few independent units for an interval (docs/statistics.md). " +
    "Hover a column header for the metric's meaning; click it to sort. Bold: the best SAE of a column (★) and every " +
    "SAE not distinguishable from it (paired comparison over the same units where they coincide, else Welch; Holm " +
    "over the column's rows, 5% family-wise). Italic grey rows are baselines (random init, PCA or neuron basis): " +
    "floors, never marked. ● ◐ ○ beside a header: the column's training-seed reliability (ranks architectures / " +
    "separates only large differences / cannot rank at this profile)."));
  if (DATA.left_out.length) {
    APP.append(el("div", { class: "warning", id: "left-out" }, el("strong", {}, `${DATA.left_out.length} result file(s) left out:`),
      el("ul", {}, DATA.left_out.map((w) => el("li", {}, w)))));
  }
  const tables = [];
  const [bar, state] = filterBar(DATA.sections, () => {
    for (const [sec, node] of sectionNodes) node.hidden = (state.model && sec.model !== state.model) || (state.hook && sec.hook !== state.hook);
    tables.forEach((t) => t.redraw());
  });
  APP.append(bar);
  const visible = (r) => (!state.architecture || r.architecture === state.architecture) && (!state.d_sae || String(r.d_sae) === state.d_sae);
  const sectionNodes = [];
  for (const sec of DATA.sections) {
    const node = el("section", { id: sec.id, "data-model": sec.model, "data-hook": sec.hook },
      el("h2", {}, `${sec.model} · ${sec.hook}`), el("p", { class: "config" }, "Config: " + sec.config));
    for (const [name, what] of Object.entries(sec.mixed)) {
      node.append(el("p", { class: "warning" }, `⚠ ${name} holds results of different SAEs (${what}): rerun them under distinct names.`));
    }
    for (const t of sec.tables) {
      const cols = [
        { label: "SAE", help: "the SAE's name; opens its page", key: (r) => r.sae,
          cell: (r) => el("a", { href: saeHref(r.page) }, r.sae + (r.mixed ? " ⚠" : "")) },
        { label: "arch", help: "architecture", key: (r) => r.architecture, cell: (r) => r.architecture },
        { label: "d_sae", help: "width: number of latents", key: (r) => r.d_sae, cell: (r) => String(r.d_sae) },
      ].concat(metricColumns(t.columns));
      const table = sortableTable(cols, t.rows, { visible });
      table.dataset.table = t.title;
      tables.push(table);
      node.append(el("h3", {}, t.title), el("div", { class: "scroll" }, table));
      for (const why of t.flags) node.append(el("p", { class: "warning" }, "⚠ not resolved at this profile: " + why));
    }
    if (sec.resolution.length) {
      const heads = ["evaluator", "metric", "pairs resolved", "tied with the best", "training-seed reliability"];
      const cols = heads.map((h, i) => ({ label: h, key: (r) => r[i], cell: (r) => r[i] }));
      const table = sortableTable(cols, sec.resolution, {});
      table.dataset.table = "resolution";
      node.append(el("h3", {}, "What each column can tell apart"), el("p", { class: "help" },
        "Pairs resolved: SAE pairs whose difference is significant (Holm over the column's pairs, 5%). Tied with the best: the SAEs in bold."),
        el("div", { class: "scroll" }, table));
    }
    sectionNodes.push([sec, node]);
    APP.append(node);
  }
}

// ---- plots -----------------------------------------------------------------------------------
function niceTicks(lo, hi, n) {
  const span = hi - lo || Math.abs(hi) || 1, step0 = span / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// series: [{name, colour, points: [{x, y, lo, hi, label, lines[], href}]}]
function chart(series, xLabel, yLabel, opts) {
  const o = opts || {}, W = 640, H = 400, L = 70, R = 20, T = 20, B = 48;
  const pts = series.flatMap((s) => s.points);
  const xs = pts.map((p) => p.x), ys = pts.flatMap((p) => [p.y, p.lo, p.hi].filter((v) => v !== undefined && v !== null));
  const logx = o.logx && xs.every((x) => x > 0);
  const fx = logx ? Math.log2 : (v) => v;
  let x0 = Math.min(...xs.map(fx)), x1 = Math.max(...xs.map(fx)), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const padx = (x1 - x0) * 0.08 || 0.5, pady = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 0.5;
  x0 -= padx; x1 += padx; y0 -= pady; y1 += pady;
  const sx = (v) => L + ((fx(v) - x0) / (x1 - x0)) * (W - L - R), sy = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart", role: "img", "aria-label": `${yLabel} against ${xLabel}` });
  const xt = logx ? niceTicks(x0, x1, 8).filter((v) => Number.isInteger(v)).map((v) => Math.pow(2, v)) : niceTicks(x0, x1, 8);
  for (const v of xt) {
    g.append(svg("line", { x1: sx(v), x2: sx(v), y1: T, y2: H - B, class: "grid" }),
      svg("text", { x: sx(v), y: H - B + 16, "text-anchor": "middle", class: "tick" }, String(v)));
  }
  for (const v of niceTicks(y0, y1, 6)) {
    g.append(svg("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: "grid" }),
      svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", class: "tick" }, String(v)));
  }
  g.append(svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", class: "axis" }, xLabel + (logx ? " (log scale)" : "")),
    svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis", transform: `rotate(-90 14 ${(T + H - B) / 2})` }, yLabel));
  for (const s of series) {
    const sorted = s.points.slice().sort((a, b) => a.x - b.x || a.y - b.y);
    if (sorted.length > 1 && o.lines !== false) {
      if (s.name !== "baseline") g.append(svg("polyline", { points: sorted.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "), fill: "none", stroke: s.colour, "stroke-width": 1.2 }));
    }
    for (const p of sorted) {
      if (p.lo !== undefined && p.lo !== null) {
        g.append(svg("line", { x1: sx(p.x), x2: sx(p.x), y1: sy(p.lo), y2: sy(p.hi), stroke: s.colour, class: "errbar" }),
          svg("line", { x1: sx(p.x) - 3, x2: sx(p.x) + 3, y1: sy(p.lo), y2: sy(p.lo), stroke: s.colour }),
          svg("line", { x1: sx(p.x) - 3, x2: sx(p.x) + 3, y1: sy(p.hi), y2: sy(p.hi), stroke: s.colour }));
      }
      const c = svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 5, fill: s.colour, class: "point" + (p.href ? " link" : ""), "data-sae": p.label });
      c.addEventListener("mouseenter", (e) => showTip(e, p.lines));
      c.addEventListener("mousemove", (e) => showTip(e, p.lines));
      c.addEventListener("mouseleave", hideTip);
      if (p.href) c.addEventListener("click", () => { window.location.href = p.href; });
      g.append(c);
    }
  }
  const legend = el("div", { class: "legend" }, series.map((s) => el("span", {}, el("i", { class: "swatch", "data-colour": s.colour }), s.name)));
  legend.querySelectorAll("i.swatch").forEach((i) => { i.style.background = i.dataset.colour; });
  return el("div", { class: "chart-box" }, g, legend);
}

function renderPlots() {
  APP.append(el("h1", {}, DATA.title + ": frontier plots"));
  APP.append(el("p", {}, "Any metric against L0 (from core) or width, one series per architecture, bars at the ends of each " +
    "95% interval. Hover a point for the SAE; click it to open the SAE's page."));
  for (const sec of DATA.sections) {
    const node = el("section", { id: sec.id }, el("h2", {}, `${sec.model} · ${sec.hook}`), el("p", { class: "config" }, "Config: " + sec.config));
    const byEv = {};
    sec.metrics.forEach((m, i) => (byEv[m.ev] = byEv[m.ev] || []).push([m, i]));
    const fvu = sec.metrics.findIndex((m) => m.ev === "core" && m.metric === "fvu");
    const first = fvu >= 0 ? fvu : sec.metrics.findIndex((m) => m.headline && !(m.ev === "core" && m.metric === "l0"));
    const msel = el("select", { class: "metric-select" }, Object.entries(byEv).map(([ev, ms]) =>
      el("optgroup", { label: ev }, ms.map(([m, i]) => el("option", { value: i, selected: i === Math.max(first, 0) ? "" : null }, `${ev}: ${m.label}${m.headline ? "" : " (not headline)"}`)))));
    const xsel = el("select", { class: "x-select" }, el("option", { value: "l0" }, "L0"), el("option", { value: "d_sae" }, "width (d_sae)"));
    const help = el("p", { class: "help" });
    const box = el("div", { class: "plot" });
    const draw = () => {
      const m = sec.metrics[+msel.value], xk = xsel.value;
      help.textContent = m.help;
      const series = {};
      for (const s of sec.saes) {
        const c = m.points[s.name], x = s[xk];
        if (!c || x === null || x === undefined || !(x > 0)) continue;
        const lines = [s.name, `${s.architecture}, d_sae ${s.d_sae}`, `${m.label}: ${c.t}`, `${xk === "l0" ? "L0" : "d_sae"}: ${x}`];
        const group = s.baseline ? "baseline" : s.architecture;
        (series[group] = series[group] || []).push({ x, y: c.v, lo: c.lo, hi: c.hi, label: s.name, lines, href: saeHref(s.page) });
      }
      const list = Object.keys(series).sort().map((a) => ({ name: a, colour: colour(a), points: series[a] }));
      box.replaceChildren(list.length ? chart(list, xk === "l0" ? "L0 (active latents per token)" : "width (d_sae)", m.label, { logx: true })
        : el("p", {}, "No SAE has both numbers."));
    };
    msel.addEventListener("change", draw);
    xsel.addEventListener("change", draw);
    node.append(el("div", { class: "filters" }, el("label", {}, "metric ", msel), el("label", {}, "against ", xsel)), help, box);
    APP.append(node);
    draw();
  }
}

// ---- one SAE ---------------------------------------------------------------------------------
function kvTable(obj) {
  return el("table", { class: "kv" }, el("tbody", {}, Object.entries(obj).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))));
}

function renderSae() {
  const d = DATA;
  APP.append(el("h1", {}, d.name));
  if (d.mixed) APP.append(el("p", { class: "warning" }, `⚠ this row holds results of different SAEs (${d.mixed}): rerun them under distinct names.`));
  APP.append(kvTable({ section: d.section, config: d.config, architecture: d.architecture, d_in: String(d.d_in), d_sae: String(d.d_sae),
    source: d.source, fingerprint: d.fingerprints.join(", ") }));
  if (d.has_latents) APP.append(el("p", {}, el("a", { href: latentsHref(pageSlug()) }, "Sampled latents (N2G, autointerp) →")));
  APP.append(el("p", {}, "Evaluators: ", d.evaluators.map((e, i) => [i ? ", " : "", el("a", { href: "#ev-" + e.name }, e.name)])));
  for (const e of d.evaluators) {
    const sec = el("section", { id: "ev-" + e.name }, el("h2", {}, e.name));
    const cols = [
      { label: "metric", help: "hover a metric for its meaning", key: (r) => r.label, cell: (r) => el("span", { title: r.help }, r.label) },
      { label: "value (95% interval)", help: "value ± half-width, [low, high] when asymmetric, (n=k) with too few units", key: (r) => r.v, cell: (r) => r.t },
      { label: "units", help: "independent units behind the interval", key: (r) => r.units, cell: (r) => r.units },
    ];
    sec.append(el("div", { class: "scroll" }, sortableTable(cols, e.metrics, { cls: "metrics" })));
    for (const n of e.notes) sec.append(el("p", { class: "note" }, "note: " + n));
    for (const [name, c] of Object.entries(e.details.curves)) {
      const points = c.x.map((x, i) => ({ x, y: c.y[i], label: name, lines: [`${c.x_label} = ${x}`, `${c.y_label} = ${c.y[i]}`] }))
        .filter((p) => p.x !== null && p.y !== null);
      const dir = { up: ", higher is better", down: ", lower is better" }[c.direction] || "";
      if (points.length) sec.append(el("h3", {}, `curve: ${name}`), chart([{ name: d.name, colour: colour(d.architecture), points }], c.x_label, c.y_label + dir, { logx: true }));
    }
    for (const t of e.details.tables) {
      const cols2 = t.columns.map((c, i) => ({ label: c, key: (r) => (r[i].v !== null ? r[i].v : r[i].t), cell: (r) => r[i].t }));
      sec.append(el("h3", {}, t.title + ` (${t.rows.length} rows${t.cut ? `; ${t.cut} more not shown` : ""})`),
        el("div", { class: "scroll" }, sortableTable(cols2, t.rows, { cls: "details" })));
    }
    if (Object.keys(e.details.settings).length) sec.append(el("h3", {}, "details"), kvTable(e.details.settings));
    sec.append(el("details", {}, el("summary", {}, "config, provenance"),
      kvTable({ file: e.file, fingerprint: e.fingerprint, run_key: e.run_key, created_at: e.created_at }),
      el("h4", {}, "timing (s)"), kvTable(e.timing), el("h4", {}, "config"), el("pre", {}, e.config),
      el("h4", {}, "environment"), el("pre", {}, e.env)));
    APP.append(sec);
  }
}

function pageSlug() {
  const file = decodeURIComponent(window.location.pathname.split("/").pop() || "");
  return file.replace(/\.html$/, "");
}

// ---- latents ---------------------------------------------------------------------------------
function tokens(toks) {
  const maxA = Math.max(1e-9, ...toks.map((t) => (t.a > 0 ? t.a : 0)));
  return el("span", { class: "tokens" }, toks.map((t) => {
    const span = el("span", { class: "tok " + t.kind + (t.a > 0 ? " active" : ""), title: t.a !== undefined && t.a !== null ? `activation ${t.a}` : null }, t.t);
    if (t.a > 0) span.style.backgroundColor = `rgba(255, 120, 0, ${(0.25 + 0.75 * (t.a / maxA)).toFixed(3)})`;
    return span;
  }));
}

function histogram(h) {
  const counts = h.counts || [], edges = h.edges || counts.map((_, i) => i);
  const pts = counts.map((c, i) => ({ x: (edges[i] + (edges[i + 1] !== undefined ? edges[i + 1] : edges[i])) / 2 || i + 1, y: c, label: "bin", lines: [`bin ${edges[i]}`, `count ${c}`] }));
  return chart([{ name: "activation histogram", colour: "#1f77b4", points: pts }], "activation", "count", { lines: true });
}

function contextTokens(c) {
  return tokens(c.t.map((t, i) => ({ kind: "tok", t, a: c.a[i] })));
}

function logitList(title, rec) {
  return el("div", { class: "logits " + title }, el("h4", {}, title),
    el("table", { class: "lens" }, el("tbody", {}, rec.t.map((t, i) => el("tr", {}, el("td", {}, el("span", { class: "tok" }, t)), el("td", { class: "num" }, rec.v[i]))))));
}

function latentDetail(lat) {
  const box = el("section", { id: "latent-detail", class: "latent", "data-latent": lat.id }, el("h2", {}, `${DATA.sae} · latent ${lat.id}`));
  if (lat.autointerp) {
    const a = lat.autointerp;
    box.append(el("h3", {}, "autointerp"), el("p", { class: "explanation" }, a.explanation === null ? "(no explanation)" : a.explanation),
      kvTable({ status: a.status, "active tokens": a.n_active_tokens, "max activation": a.max_act }));
    const keys = uniq(Object.values(a.scores).flatMap((s) => Object.keys(s)));
    if (keys.length) {
      box.append(el("table", { class: "data scores" }, el("thead", {}, el("tr", {}, el("th", {}, "score"), keys.map((k) => el("th", {}, k)))),
        el("tbody", {}, Object.entries(a.scores).map(([k, s]) => el("tr", {}, el("th", {}, k), keys.map((c) => el("td", {}, s[c] || "")))))));
    }
  }
  if (lat.n2g) {
    box.append(el("h3", {}, "N2G patterns (F1 " + (lat.n2g.scores.f1 || "n/a") + ")"), kvTable(lat.n2g.scores),
      el("p", { class: "help" }, "Each pattern is the pruned context of a top activating example: ^ = right after a BOS, * = any token; the last " +
        "token is the activating one, shaded by the pattern's activation (a fraction of the latent's maximum)."),
      el("ol", { class: "patterns" }, lat.n2g.patterns.map((p) => el("li", {}, p.tokens ? tokens(p.tokens) : el("code", {}, p.text), el("span", { class: "act" }, " act " + p.act_text)))));
  }
  if (lat.dashboard) {
    const d = lat.dashboard;
    box.append(el("h3", {}, "activations"), kvTable(Object.fromEntries([["sampled by", d.sampled_by], ["fires on (positions)", d.n_fire], ["density", d.density], ["max activation", d.max_act]].filter(([, v]) => v !== undefined))));
    if (d.promoted || d.suppressed) {
      box.append(el("h3", {}, "output tokens"),
        el("p", { class: "help" }, "Logit lens of the decoder row: W_dec[i] scaled by the final norm's gain, times W_U (the norm's 1/RMS scale left out; docs/web.md)."),
        el("div", { class: "logit-lists" }, d.promoted ? logitList("promoted", d.promoted) : null, d.suppressed ? logitList("suppressed", d.suppressed) : null));
    }
  }
  if (lat.contexts) {
    box.append(el("h3", {}, "top activating contexts"), el("p", { class: "help" }, "Windows around the largest activations (one per stretch of text), shaded by the activation; hover a token for its value."),
      el("ol", { class: "contexts" }, lat.contexts.map((c) => el("li", {}, contextTokens(c)))));
  } else box.append(el("p", { class: "note" }, "The results store no activating contexts, activation histogram or promoted/suppressed tokens for this latent (run --evals dashboard; docs/web.md)."));
  if (lat.histogram) box.append(el("h3", {}, "activation histogram"), histogram(lat.histogram));
  if (lat.other) for (const [ev, rec] of Object.entries(lat.other)) box.append(el("h3", {}, ev), kvTable(rec));
  return box;
}

function latentText(lat) {
  const parts = [lat.autointerp && lat.autointerp.explanation, ...(lat.n2g ? lat.n2g.patterns.map((p) => p.text) : [])];
  return parts.filter((x) => x).join(" | ");
}

function searchBox(onInput) {
  return el("label", { class: "search" }, "search by latent id or text ",
    el("input", { type: "search", id: "latent-search", placeholder: "e.g. 1167 or New York", on: { input: (e) => onInput(e.target.value) } }));
}

function matches(q, id, text) {
  q = q.trim().toLowerCase();
  if (!q) return true;
  if (/^\d+$/.test(q)) return String(id) === q;
  return text.includes(q);
}

function renderLatents() {
  APP.append(el("h1", {}, `${DATA.sae}: sampled latents`), el("p", {}, el("a", { href: saeHref(DATA.page) }, "← SAE page"), ` · ${DATA.section}`));
  const detail = el("div", { id: "detail" });
  let query = "";
  const cols = [
    { label: "latent", key: (l) => l.id, cell: (l) => el("a", { href: "#" + l.id }, String(l.id)) },
    { label: "N2G F1", help: "token-level F1 of the latent's N2G patterns on held-out text", key: (l) => (l.n2g ? l.n2g.f1 : null), cell: (l) => (l.n2g ? l.n2g.scores.f1 || "" : "") },
    { label: "explanation / patterns", key: (l) => latentText(l), cell: (l) => latentText(l) },
  ];
  const table = sortableTable(cols, DATA.latents, { visible: (l) => matches(query, l.id, l.q), limit: 500 });
  APP.append(detail, searchBox((q) => { query = q; table.redraw(); }), el("div", { class: "scroll" }, table));
  const show = () => {
    const id = decodeURIComponent(window.location.hash.slice(1));
    const lat = DATA.latents.find((l) => String(l.id) === id);
    detail.replaceChildren(lat ? latentDetail(lat) : el("p", {}, id ? `Latent ${id} was not sampled by any evaluator.` : "Choose a latent below."));
  };
  window.addEventListener("hashchange", show);
  show();
}

function renderSearch() {
  APP.append(el("h1", {}, "Sampled latents"), el("p", {}, `${DATA.latents.length} latents sampled by N2G or autointerp across all SAEs.`));
  let query = "";
  const cols = [
    { label: "SAE", key: (l) => l.sae, cell: (l) => l.sae },
    { label: "latent", key: (l) => l.id, cell: (l) => el("a", { href: latentsHref(l.page, l.id) }, String(l.id)) },
    { label: "N2G F1", key: (l) => l.f1, cell: (l) => (l.f1 === null || l.f1 === undefined ? "" : l.f1.toPrecision(4)) },
    { label: "explanation / patterns", key: (l) => l.text, cell: (l) => l.text },
  ];
  const table = sortableTable(cols, DATA.latents, { visible: (l) => matches(query, l.id, l.q), limit: 500 });
  APP.append(searchBox((q) => { query = q; table.redraw(); }), el("div", { class: "scroll" }, table));
}

// ---- compare ---------------------------------------------------------------------------------
function renderCompare() {
  APP.append(el("h1", {}, "Compare two SAEs"), el("p", {}, "Paired differences A − B with 95% intervals and verdicts, computed by " +
    "saebench compare A B (p: paired over the same units; Holm family-wise over the compared metrics) when the site was built."));
  for (const sec of DATA.sections) {
    const node = el("section", { id: sec.id }, el("h2", {}, `${sec.model} · ${sec.hook}`), el("p", { class: "config" }, "Config: " + sec.config));
    const params = new URLSearchParams(window.location.search);
    const pick = (id, def) => el("select", { id: `${sec.id}-${id}` }, sec.saes.map((s) => el("option", { value: s, selected: s === (params.get(id) || def) ? "" : null }, s)));
    const sa = pick("a", sec.saes[0]), sb = pick("b", sec.saes[1] || sec.saes[0]);
    const only = el("input", { type: "checkbox", id: `${sec.id}-only` });
    const out = el("div", { class: "compare-out" });
    const draw = () => {
      const a = sa.value, b = sb.value;
      if (a === b) { out.replaceChildren(el("p", {}, "Choose two different SAEs.")); return; }
      const pair = sec.pairs.find((p) => (p.a === a && p.b === b) || (p.a === b && p.b === a));
      if (!pair) {
        out.replaceChildren(el("p", { class: "note" }, `This section has too many SAEs (${sec.saes.length}) for precomputed ` +
          "comparisons of every pair; run: saebench compare RESULTS/" + a + " RESULTS/" + b));
        return;
      }
      const swapped = pair.a !== a;
      const cols = [
        { label: "eval", key: (r) => r.ev, cell: (r) => r.ev },
        { label: "metric", key: (r) => r.metric, cell: (r) => r.metric },
        { label: "A: " + pair.a, key: (r) => r.a, cell: (r) => r.a },
        { label: "B: " + pair.b, key: (r) => r.b, cell: (r) => r.b },
        { label: "A − B [95% CI] (p: paired)", key: (r) => r.diff, cell: (r) => r.diff },
        { label: "min effect", key: (r) => r.min_effect, cell: (r) => r.min_effect },
        { label: "verdict", key: (r) => r.verdict, cell: (r) => el("span", { class: "verdict " + r.kind, title: r.basis || null }, r.verdict) },
      ];
      out.replaceChildren(
        swapped ? el("p", { class: "note" }, `Computed once per pair: shown with A = ${pair.a}, B = ${pair.b}.`) : "",
        el("p", { class: "summary" }, pair.summary),
        pair.notes.length ? el("ul", { class: "notes" }, pair.notes.map((n) => el("li", {}, n))) : "",
        el("div", { class: "scroll" }, sortableTable(cols, pair.rows, { cls: "compare", visible: (r) => !only.checked || r.kind })));
    };
    [sa, sb, only].forEach((x) => x.addEventListener("change", draw));
    node.append(el("div", { class: "filters" }, el("label", {}, "A ", sa), el("label", {}, "B ", sb),
      el("label", {}, only, " only verdicts beyond noise or failing")), out);
    APP.append(node);
    draw();
  }
}

const RENDER = { board: renderBoard, plots: renderPlots, sae: renderSae, latents: renderLatents, search: renderSearch, compare: renderCompare };
RENDER[document.body.dataset.page]();
