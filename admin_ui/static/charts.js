// Charts: every <div class="chart" data-series="ID"> is drawn with uPlot from the JSON in
// <script type="application/json" id="ID"> (the CSP allows no inline code, so data travels as JSON, not script).
// The JSON: {"zone": "Europe/Paris", "x": [epoch seconds...], "series": [{"label": "...", "values": [...]}, ...]}.
// The server computes the buckets (days or hours) in the viewer's zone; the axis shows times in that zone too.
"use strict";

(function () {
  var COLORS = ["#2457d6", "#b42318", "#137a3a", "#a15c00", "#7a2fd6", "#6b7280"];
  var HEIGHT = 240;

  function seriesOptions(spec) {
    var out = [{}];
    spec.series.forEach(function (s, i) {
      var color = COLORS[i % COLORS.length];
      out.push({
        label: s.label,
        stroke: color,
        width: 2,
        fill: spec.fill ? color + "22" : undefined,
        points: { show: true, size: 5, fill: color },
        value: function (u, v) { return v == null ? "" : v.toLocaleString(); },
      });
    });
    return out;
  }

  function draw(el) {
    if (el.uplot || !window.uPlot) return;
    var source = document.getElementById(el.getAttribute("data-series"));
    if (!source) return;
    var spec = JSON.parse(source.textContent);
    var zone = spec.zone || "UTC";
    var data = [spec.x].concat(spec.series.map(function (s) { return s.values; }));
    var opts = {
      width: Math.max(el.clientWidth, 320),
      height: HEIGHT,
      series: seriesOptions(spec),
      scales: { x: { time: true } },
      // Times on the axis and in the legend are the viewer's zone, not the browser's.
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), zone); },
      axes: [{}, { size: 64, values: function (u, ticks) { return ticks.map(function (v) { return v.toLocaleString(); }); } }],
    };
    el.uplot = new uPlot(opts, data, el);
    el.setAttribute("data-drawn", String(spec.x.length));
  }

  function drawAll(root) {
    var scope = root && root.querySelectorAll ? root : document;
    Array.prototype.forEach.call(scope.querySelectorAll(".chart[data-series]"), draw);
  }

  function resizeAll() {
    Array.prototype.forEach.call(document.querySelectorAll(".chart[data-series]"), function (el) {
      if (el.uplot) el.uplot.setSize({ width: Math.max(el.clientWidth, 320), height: HEIGHT });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  } else {
    drawAll(document);
  }
  // A chart that arrives in an htmx swap (a refreshed panel) is drawn once it is in the page.
  document.addEventListener("htmx:afterSettle", function (event) { drawAll(event.target); });
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(resizeAll, 150);
  });
})();
