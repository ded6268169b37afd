// The atlas gallery: grid, filter, the detail view with the objective curve and the unit's
// dataset examples; #layer/index (e.g. #_blocks.10/5) opens that unit, any other #text filters.
// fastviz.atlas.gallery inlines it into index.html after the records (JSON, id="data").
"use strict";
const recs = JSON.parse(document.getElementById("data").textContent);
const grid = document.getElementById("grid"), q = document.getElementById("q"), sel = document.getElementById("layer");
const group = r => r.layer === null ? "class" : r.layer;
for (const g of [...new Set(recs.map(group))]) sel.add(new Option(g === "class" ? "class models" : g, g));
const figs = recs.map((r, i) => {
  const f = document.createElement("figure");
  const img = document.createElement("img");
  img.loading = "lazy"; img.src = r.file; img.alt = r.target; img.width = 128; img.height = 128;
  const c = document.createElement("figcaption");
  c.textContent = r.label !== null ? r.index + " " + r.label : r.layer + " #" + r.index;
  f.append(img, c); f.dataset.i = i;
  f.dataset.key = (r.target + " " + (r.label || "")).toLowerCase();
  f.onclick = () => show(r);
  grid.append(f);
  return f;
});
function filter() {
  const words = q.value.toLowerCase().split(/\s+/).filter(Boolean), g = sel.value;
  let n = 0;
  for (const f of figs) {
    const r = recs[f.dataset.i];
    const ok = (!g || group(r) === g) && words.every(w => f.dataset.key.includes(w));
    f.hidden = !ok; n += ok;
  }
  document.getElementById("count").textContent = n + " of " + recs.length;
}
function curveSvg(r) {
  const W = 320, H = 180, P = 34, ys = r.curve, xs = r.curve_steps;
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1, xmax = xs[xs.length - 1] || 1;
  const pts = ys.map((y, i) => ((P + (W - P - 8) * xs[i] / xmax).toFixed(1)) + "," +
                               ((H - P + 8 - (H - P) * (y - lo) / span).toFixed(1))).join(" ");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H + 14}" role="img">` +
    `<rect x="${P}" y="8" width="${W - P - 8}" height="${H - P}" fill="none" stroke="#555"/>` +
    `<polyline points="${pts}" fill="none" stroke="#6cf" stroke-width="1.5"/>` +
    `<text x="2" y="16">${hi.toPrecision(3)}</text><text x="2" y="${H - P + 8}">${lo.toPrecision(3)}</text>` +
    `<text x="${P}" y="${H - 8}">step 1</text><text x="${W - 60}" y="${H - 8}">step ${xmax}</text>` +
    `<text x="${P}" y="${H + 8}">objective per step</text></svg>`;
}
function show(r) {
  document.getElementById("big").src = r.file;
  document.getElementById("title").textContent = r.target;
  document.getElementById("meta").textContent = "objective " + r.objective.toPrecision(4) +
    ", " + r.settings.steps + " steps, seed " + r.seed + ", " + r.seconds.toFixed(3) + " s";
  document.getElementById("plot").innerHTML = curveSvg(r);
  showExamples(r);
  document.getElementById("view").classList.add("open");
  if (r.layer !== null) history.replaceState(null, "", "#" + r.layer + "/" + r.index);
}
function showExamples(r) {
  const box = document.getElementById("examples");
  box.replaceChildren();
  if (!r.examples) return;
  const h = document.createElement("h4");
  h.textContent = "dataset examples (activation overlaid; hover for the plain crop)";
  box.append(h);
  for (const e of r.examples) {
    const f = document.createElement("figure"), img = document.createElement("img"), c = document.createElement("figcaption");
    img.src = e.overlay; img.alt = e.name; img.title = e.name;
    img.onmouseenter = () => { img.src = e.file; };
    img.onmouseleave = () => { img.src = e.overlay; };
    c.textContent = e.score.toPrecision(3) + " " + e.name;
    f.append(img, c);
    box.append(f);
  }
}
function closeView() {
  document.getElementById("view").classList.remove("open");
  history.replaceState(null, "", location.pathname + location.search);
}
document.getElementById("view").onclick = closeView;
document.addEventListener("keydown", e => { if (e.key === "Escape") closeView(); });
q.oninput = filter; sel.onchange = filter;
// A unit's stable link: #<layer>/<channel index>.
function unitOf(hash) {
  const m = /^(.+)\/(\d+)$/.exec(hash);
  return m ? recs.find(r => r.layer === m[1] && r.index === Number(m[2])) : undefined;
}
const hash = decodeURIComponent(location.hash.slice(1));
const unit = hash ? unitOf(hash) : undefined;
if (hash && !unit) q.value = hash;
filter();
if (unit) show(unit);
