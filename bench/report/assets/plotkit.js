// The helpers bench/report/interactive.py's page scripts share (explore.js, curves.js): DOM and SVG
// elements, and linear or log scales with their ticks. Embedded inline before them, in the same script element.
const Plotkit = (function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
  let parsed = null;

  // The page's JSON blob #explore-data, parsed once for both scripts.
  function exploreData() {
    if (parsed === null) parsed = JSON.parse(document.getElementById("explore-data").textContent);
    return parsed;
  }

  function element(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- scales and ticks
  function niceStep(span) {
    const raw = span / 5;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / power;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * power;
  }

  function makeScale(values, log, from, to) {
    const t = log ? Math.log10 : (v) => v;
    let lo = Math.min(...values.map(t));
    let hi = Math.max(...values.map(t));
    if (hi === lo) { // one value: a window around it
      const pad = log ? 0.5 : Math.abs(lo) * 0.1 || 1;
      lo -= pad; hi += pad;
    } else {
      const pad = (hi - lo) * 0.06;
      lo -= pad; hi += pad;
    }
    const map = (v) => from + ((t(v) - lo) / (hi - lo)) * (to - from);
    return { map, ticks: log ? logTicks(lo, hi) : linearTicks(lo, hi) };
  }

  function linearTicks(lo, hi) {
    const step = niceStep(hi - lo);
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  function logTicks(lo, hi) { // lo, hi: log10 of the ends
    let ticks = [];
    for (const mantissas of [[1], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
      ticks = [];
      for (let k = Math.floor(lo); k <= Math.ceil(hi); k++) {
        for (const m of mantissas) {
          const v = m * Math.pow(10, k);
          if (Math.log10(v) >= lo && Math.log10(v) <= hi) ticks.push(Number(v.toPrecision(12)));
        }
      }
      if (ticks.length >= 3) break;
    }
    return ticks.length >= 2 ? ticks : linearTicks(Math.pow(10, lo), Math.pow(10, hi)).filter((v) => v > 0);
  }

  function tickText(v, unit) {
    if (unit === "count") {
      for (const [suffix, size] of [["B", 1e9], ["M", 1e6], ["K", 1e3]]) {
        if (Math.abs(v) >= size) return Number((v / size).toPrecision(3)) + suffix;
      }
    }
    return String(Number(v.toPrecision(4)));
  }

  return { exploreData, isNumber, element, svg, makeScale, tickText };
})();
