// index.html's curve picker: the reader picks a cell (of the explore table's rows shown) and sees its training
// curve (loss, learning rate, gradient norm, tokens/s) and evaluation curve, each a small line chart in SVG.
// The curves are in the blob #explore-data (data.cells, compacted by bench/report/explore_curves.py).
// Embedded after plotkit.js and before explore.js, whose "explore-shown" event says which rows are shown.
(function () {
  "use strict";
  const { exploreData, isNumber, element, svg, makeScale, tickText } = Plotkit;
  const box = document.getElementById("explore-curves");
  if (!box) return; // no cell has a curve: the page has no picker
  const data = exploreData();
  const PANELS = [ // [series, x key, title]
    ["loss", "step", "training loss"],
    ["lr", "step", "learning rate"],
    ["grad_norm", "step", "gradient norm before clipping"],
    ["tokens_per_s", "step", "tokens/s"],
    ["eval", "eval_step", "main metric during training"],
  ];
  const W = 360, H = 210, M = { left: 58, right: 12, top: 22, bottom: 34 };

  const pick = element("select", { id: "explore-curve-pick", name: "curve" });
  const label = element("label", { for: pick.id }, "cell ");
  label.append(pick);
  const note = element("p", { class: "notes", id: "explore-curve-note" });
  const panels = element("div", { class: "curve-panels" });
  const bar = element("div", { class: "explore-controls" });
  bar.append(label);
  box.append(element("h3", {}, "Training curves"), bar, note, panels);
  pick.addEventListener("change", draw);

  function cellName(cell) {
    const row = data.rows[cell.row];
    return row.method + " · " + row.model + " · " + row.task + " · seed " + cell.seed +
      (cell.status === "ok" ? "" : " (" + cell.status + ")");
  }

  // The picker lists the cells of the rows shown, in the table's order; it keeps its choice while listed.
  function list(shown) {
    const before = pick.value;
    pick.textContent = "";
    for (const i of shown) {
      for (const c of data.rows[i].cells || []) pick.append(element("option", { value: c }, cellName(data.cells[c])));
    }
    if ([...pick.options].some((o) => o.value === before)) pick.value = before;
    draw();
  }

  // One chart: the series against its steps, a gap where a value is unknown.
  function panel(curve, series, xKey, title) {
    const xs = curve[xKey], ys = curve[series];
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
      class: "curve-panel", "data-series": series, "aria-label": title });
    root.append(svg("text", { x: M.left, y: 14 }, title));
    const x0 = M.left, x1 = W - M.right, y0 = H - M.bottom, y1 = M.top;
    root.append(svg("rect", { class: "frame", x: x0, y: y1, width: x1 - x0, height: y0 - y1 }));
    const known = ys.map((y, k) => [xs[k], y]).filter(([, y]) => isNumber(y));
    if (!known.length) {
      root.append(svg("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, "text-anchor": "middle" },
        series === "eval" ? "no evaluation during training (eval_every)" : "not recorded"));
      return root;
    }
    const sx = makeScale(known.map(([x]) => x), false, x0, x1);
    const sy = makeScale(known.map(([, y]) => y), false, y0, y1);
    for (const t of sx.ticks) {
      root.append(svg("line", { class: "grid", x1: sx.map(t), x2: sx.map(t), y1: y0, y2: y1 }));
      root.append(svg("text", { x: sx.map(t), y: y0 + 14, "text-anchor": "middle" }, tickText(t, "")));
    }
    for (const t of sy.ticks) {
      root.append(svg("line", { class: "grid", x1: x0, x2: x1, y1: sy.map(t), y2: sy.map(t) }));
      root.append(svg("text", { x: x0 - 4, y: sy.map(t) + 4, "text-anchor": "end" }, tickText(t, "")));
    }
    root.append(svg("text", { x: (x0 + x1) / 2, y: H - 4, "text-anchor": "middle" }, "step"));
    let d = "", gap = true;
    ys.forEach((y, k) => {
      if (!isNumber(y)) { gap = true; return; }
      d += (gap ? "M" : "L") + sx.map(xs[k]).toFixed(2) + "," + sy.map(y).toFixed(2);
      gap = false;
    });
    root.append(svg("path", { class: "curve-line", d, "data-points": known.length }));
    if (known.length === 1) { // a lone point draws no line: mark it
      root.append(svg("circle", { class: "curve-dot", cx: sx.map(known[0][0]), cy: sy.map(known[0][1]), r: 3 }));
    }
    return root;
  }

  function draw() {
    panels.textContent = "";
    if (pick.value === "") {
      note.textContent = "No cell of the rows shown has a curve.";
      return;
    }
    const cell = data.cells[Number(pick.value)];
    const curve = cell.curve;
    for (const [series, xKey, title] of PANELS) {
      const named = series === "eval" && curve.split ? title + " (" + curve.split + " split)" : title;
      panels.append(panel(curve, series, xKey, named));
    }
    note.textContent = cell.id + ": " + curve.step.length + " training points from the " + curve.stored +
      " the cell stored (each the mean of a run of consecutive stored points, the learning rate at the run's " +
      "last step), " + curve.eval.length + " evaluation(s) during training.";
  }

  document.addEventListener("explore-shown", (event) => list(event.detail));
})();
