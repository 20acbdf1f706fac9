// index.html's explorer. bench/report/interactive.py embeds this file inline, so nothing is fetched.
// Reads the JSON blob #explore-data; sorts and filters the server-rendered #explore-table (rows keep
// their data-row index into the blob) and draws a Pareto plot of the rows shown as inline SVG.
// Without JavaScript the table stays as rendered, so only sorting, filtering and this plot are lost.
// Its helpers come from plotkit.js, embedded before it in the same script element.
(function () {
  "use strict";
  const { isNumber, element, svg, makeScale, tickText } = Plotkit;
  const data = Plotkit.exploreData();
  const table = document.getElementById("explore-table");
  const tbody = table.tBodies[0];
  const controls = document.getElementById("explore-controls");
  const plotBox = document.getElementById("explore-plot");
  const headers = Array.from(table.tHead.rows[0].cells);
  const axisByKey = new Map(data.axes.map((a) => [a.key, a]));
  const filterSelects = new Map(); // filter key -> its <select>
  const sort = { key: null, direction: 1 }; // direction: 1 ascending, -1 descending
  let shown = []; // blob indices of the rows the filters let through

  const rowOf = (tr) => data.rows[Number(tr.dataset.row)];

  // ---- sorting: numbers as numbers, text in natural order; empty values last in both directions
  function sortValue(tr, key, numeric) {
    const row = rowOf(tr);
    const value = numeric ? row.values[key] : row[key];
    return numeric ? (isNumber(value) ? value : null) : (value === "" ? null : value);
  }

  function sortBy(th) {
    const key = th.dataset.key;
    const numeric = th.dataset.type === "number";
    sort.direction = sort.key === key ? -sort.direction : 1;
    sort.key = key;
    const trs = Array.from(tbody.rows);
    const keyed = trs.map((tr) => [sortValue(tr, key, numeric), Number(tr.dataset.row), tr]);
    keyed.sort(([a, i], [b, j]) => {
      if (a === null || b === null) return a === b ? i - j : a === null ? 1 : -1;
      const c = numeric ? a - b : String(a).localeCompare(String(b), undefined, { numeric: true });
      return c !== 0 ? sort.direction * c : i - j; // ties keep the report's order
    });
    for (const [, , tr] of keyed) tbody.appendChild(tr);
    for (const h of headers) {
      const active = h === th;
      h.setAttribute("aria-sort", active ? (sort.direction > 0 ? "ascending" : "descending") : "none");
      h.querySelector(".arrow").textContent = active ? (sort.direction > 0 ? "▲" : "▼") : "⇅";
    }
  }

  function makeSortable() {
    for (const th of headers) {
      const button = element("button", { type: "button", title: "sort by " + th.textContent });
      button.append(th.textContent, element("span", { class: "arrow", "aria-hidden": "true" }, "⇅"));
      th.textContent = "";
      th.append(button);
      th.setAttribute("aria-sort", "none");
      button.addEventListener("click", () => sortBy(th));
    }
  }

  // ---- filtering: one select per filter key, options in the report's row order
  function makeFilters() {
    for (const key of data.filters) {
      const values = [...new Set(data.rows.map((r) => r[key]))];
      const select = element("select", { id: "explore-filter-" + key, name: key });
      select.append(element("option", { value: "" }, "all (" + values.length + ")"));
      for (const v of values) select.append(element("option", { value: v }, v));
      select.addEventListener("change", update);
      const label = element("label", { for: select.id }, key + " ");
      label.append(select);
      controls.append(label);
      filterSelects.set(key, select);
    }
    controls.append(element("span", { id: "explore-count", class: "explore-count", role: "status" }));
  }

  function applyFilters() {
    const chosen = [...filterSelects].filter(([, s]) => s.value !== "").map(([k, s]) => [k, s.value]);
    shown = [];
    for (const tr of tbody.rows) {
      const row = rowOf(tr);
      tr.hidden = !chosen.every(([k, v]) => row[k] === v);
      if (!tr.hidden) shown.push(Number(tr.dataset.row));
    }
    shown.sort((a, b) => a - b);
    document.getElementById("explore-count").textContent =
      shown.length + " of " + data.rows.length + " rows shown";
  }

  // ---- the plot's controls: an axis picker and a log switch per axis
  const axisControls = {};

  function makeAxisPickers(bar) {
    for (const [name, initial] of [["x", data.default_axes[0]], ["y", data.default_axes[1]]]) {
      const select = element("select", { id: "explore-axis-" + name, name: name + "-axis" });
      for (const a of data.axes) select.append(element("option", { value: a.key }, a.label));
      select.value = initial;
      const log = element("input", { type: "checkbox", id: "explore-log-" + name });
      log.checked = axisByKey.get(initial).log;
      select.addEventListener("change", () => {
        log.checked = axisByKey.get(select.value).log; // each axis starts on its own scale
        draw();
      });
      log.addEventListener("change", draw);
      const pick = element("label", { for: select.id }, name + " axis ");
      pick.append(select);
      const logLabel = element("label", { for: log.id });
      logLabel.append(log, " log");
      bar.append(pick, logLabel);
      axisControls[name] = { select, log };
    }
  }

  // ---- the Pareto front, as bench/report/pareto.py computes it once each axis is turned so that a lower
  // x and a higher y are better (a cost on y, or the score on x, is negated)
  function paretoFront(points, betterX, betterY) {
    const p = points.map(([x, y]) => [betterX === "lower" ? x : -x, betterY === "higher" ? y : -y]);
    const dominates = (a, b) => a[0] <= b[0] && a[1] >= b[1] && (a[0] < b[0] || a[1] > b[1]);
    const front = p.map((_, i) => i).filter((i) => !p.some((q) => dominates(q, p[i])));
    return front.sort((i, j) => p[i][0] - p[j][0] || p[j][1] - p[i][1]);
  }

  // ---- markers: the static plots' shape per family (greyscale-readable), filled with its colour
  function markerPath(shape, r) {
    const polygon = (pts) => "M" + pts.map(([x, y]) => x.toFixed(2) + "," + y.toFixed(2)).join("L") + "Z";
    const star = (points, inner) => polygon([...Array(points * 2).keys()].map((i) => {
      const a = (Math.PI * i) / points - Math.PI / 2;
      const d = i % 2 ? r * inner : r * 1.3;
      return [d * Math.cos(a), d * Math.sin(a)];
    }));
    const w = r * 0.38;
    const plus = [[-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r], [-w, r], [-w, w], [-r, w],
      [-r, -w], [-w, -w]];
    const turn = ([x, y]) => [(x - y) * Math.SQRT1_2, (x + y) * Math.SQRT1_2];
    switch (shape) {
      case "s": { const h = r * 0.85; return polygon([[-h, -h], [h, -h], [h, h], [-h, h]]); }
      case "^": return polygon([[0, -r * 1.15], [r, r * 0.75], [-r, r * 0.75]]);
      case "D": return polygon([[0, -r * 1.2], [r * 0.85, 0], [0, r * 1.2], [-r * 0.85, 0]]);
      case "P": return polygon(plus);
      case "X": return polygon(plus.map(turn));
      case "*": return star(5, 0.5);
      default: return "M" + r + ",0A" + r + "," + r + " 0 1,1 " + -r + ",0A" + r + "," + r + " 0 1,1 " + r + ",0Z";
    }
  }

  const familyStyle = (family) => data.families[family] || data.other_family;

  // ---- the plot
  const W = 780, H = 470, M = { left: 78, right: 180, top: 14, bottom: 56 };

  function draw() {
    const ax = axisByKey.get(axisControls.x.select.value);
    const ay = axisByKey.get(axisControls.y.select.value);
    const logX = axisControls.x.log.checked, logY = axisControls.y.log.checked;
    const usable = (v, log) => isNumber(v) && (!log || v > 0);
    const points = [], left = [];
    for (const i of shown) {
      const row = data.rows[i];
      const x = row.values[ax.key], y = row.values[ay.key];
      if (usable(x, logX) && usable(y, logY)) points.push({ i, row, x: x * ax.factor, y: y * ay.factor });
      else left.push(row);
    }
    const old = plotBox.querySelector("svg");
    if (old) old.remove();
    const note = plotBox.querySelector(".explore-plot-note");
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
      "aria-label": "Pareto plot: " + ay.label + " against " + ax.label });
    plotBox.insertBefore(root, note);
    const x0 = M.left, x1 = W - M.right, y0 = H - M.bottom, y1 = M.top;
    root.append(svg("rect", { class: "frame", x: x0, y: y1, width: x1 - x0, height: y0 - y1 }));
    root.append(svg("text", { x: (x0 + x1) / 2, y: H - 12, "text-anchor": "middle" },
      ax.label + (logX ? ", log scale" : "")));
    root.append(svg("text", { transform: "translate(16," + (y0 + y1) / 2 + ") rotate(-90)", "text-anchor": "middle" },
      ay.label + (logY ? ", log scale" : "")));
    const front = points.length ? paretoFront(points.map((p) => [p.x, p.y]), ax.better, ay.better) : [];
    note.textContent = describe(points, front, left, ax, ay, logX, logY);
    if (!points.length) {
      root.append(svg("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, "text-anchor": "middle" },
        "no row shown has both figures"));
      return;
    }
    const sx = makeScale(points.map((p) => p.x), logX, x0, x1);
    const sy = makeScale(points.map((p) => p.y), logY, y0, y1);
    for (const t of sx.ticks) {
      const px = sx.map(t);
      root.append(svg("line", { class: "grid", x1: px, x2: px, y1: y0, y2: y1 }));
      root.append(svg("text", { x: px, y: y0 + 16, "text-anchor": "middle" }, tickText(t, ax.unit)));
    }
    for (const t of sy.ticks) {
      const py = sy.map(t);
      root.append(svg("line", { class: "grid", x1: x0, x2: x1, y1: py, y2: py }));
      root.append(svg("text", { x: x0 - 6, y: py + 4, "text-anchor": "end" }, tickText(t, ay.unit)));
    }
    // The staircase: from each front point to the next through the corner both of them beat (the next
    // point's x, this point's y, once the front is ordered by its cost on x).
    const corners = front.map((k, n) => {
      const p = points[k], q = points[front[n + 1]];
      const here = sx.map(p.x).toFixed(1) + "," + sy.map(p.y).toFixed(1);
      return q ? here + "L" + sx.map(q.x).toFixed(1) + "," + sy.map(p.y).toFixed(1) : here;
    });
    root.append(svg("path", { class: "front-line", d: "M" + corners.join("L") }));
    const onFront = new Set(front);
    // front points last, so they sit on top
    const order = points.map((_, k) => k).sort((a, b) => onFront.has(a) - onFront.has(b));
    for (const k of order) {
      const p = points[k];
      const style = familyStyle(p.row.family);
      const g = svg("g", { class: "point" + (onFront.has(k) ? " on-front" : ""), "data-row": p.i,
        transform: "translate(" + sx.map(p.x).toFixed(1) + "," + sy.map(p.y).toFixed(1) + ")" });
      g.append(svg("title", {}, p.row.method + " · " + p.row.model + " · " + p.row.task + "\n" +
        ax.label + ": " + p.row.texts[ax.key] + "\n" + ay.label + ": " + p.row.texts[ay.key] +
        (onFront.has(k) ? "\non the Pareto front" : "")));
      if (onFront.has(k)) g.append(svg("circle", { class: "ring", r: 10 }));
      g.append(svg("path", { d: markerPath(style.marker, onFront.has(k) ? 6.5 : 5), fill: style.colour }));
      if (onFront.has(k)) g.append(svg("text", { x: 12, y: -8 }, p.row.method));
      root.append(g);
    }
    legend(root, points, x1 + 16, y1 + 8);
  }

  function legend(root, points, x, y) {
    const families = [...new Set(points.map((p) => p.row.family))];
    families.forEach((family, n) => {
      const style = familyStyle(family);
      root.append(svg("path", { d: markerPath(style.marker, 5), fill: style.colour, stroke: "#000",
        transform: "translate(" + (x + 6) + "," + (y + 18 * n) + ")" }));
      root.append(svg("text", { x: x + 18, y: y + 18 * n + 4 }, family || "(no family)"));
    });
    const below = y + 18 * families.length + 8;
    root.append(svg("path", { class: "front-line", d: "M" + x + "," + below + "h14" }));
    root.append(svg("text", { x: x + 18, y: below + 4 }, "Pareto front"));
    root.append(svg("circle", { cx: x + 6, cy: below + 20, r: 7, fill: "none", stroke: "#d00", "stroke-width": 1.5 }));
    root.append(svg("text", { x: x + 18, y: below + 24 }, "on the front"));
  }

  function describe(points, front, left, ax, ay, logX, logY) {
    const better = (a) => a.better + " " + a.label.split(" (")[0];
    let text = points.length + " of " + shown.length + " rows shown are drawn; " + front.length +
      " on the Pareto front: no other point is better on both axes (" + better(ax) + ", " + better(ay) +
      " is better).";
    if (left.length) {
      const why = (logX || logY) ? "no value, or not above 0 on a log axis" : "no value";
      const names = left.map((r) => r.method + " · " + r.model + " · " + r.task);
      text += " Not drawn (" + why + "): " + names.join(", ") + ".";
    }
    const models = new Set(points.map((p) => p.row.model)).size;
    const tasks = new Set(points.map((p) => p.row.task)).size;
    if (models > 1 || tasks > 1) {
      text += " The points span " + models + " model(s) and " + tasks + " task(s): filter to one model and " +
        "task to compare like with like.";
    }
    return text;
  }

  function update() {
    applyFilters();
    draw();
    // curves.js lists the cells of the rows shown
    document.dispatchEvent(new CustomEvent("explore-shown", { detail: shown }));
  }

  makeSortable();
  makeFilters();
  const plotBar = element("div", { class: "explore-controls" });
  plotBox.append(element("h3", {}, "Pareto explorer"), plotBar, element("p", { class: "notes explore-plot-note" }));
  makeAxisPickers(plotBar);
  for (const node of document.querySelectorAll(".needs-script")) node.hidden = false;
  update();
})();
