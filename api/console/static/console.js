// Draws every [data-chart] element with uPlot, on page load and after each htmx swap.
(function () {
  "use strict";
  function draw(el) {
    if (el.dataset.drawn || typeof uPlot === "undefined") return;
    var spec = JSON.parse(el.dataset.chart);
    var bars = spec.kind === "bars";
    var series = [{label: spec.xlabel || "x"}].concat(spec.series.map(function (s) {
      return {
        label: s.label, stroke: "#1f4e8c", width: 2,
        fill: bars ? "rgba(31, 78, 140, 0.35)" : undefined,
        paths: bars && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({size: [0.8, 40]}) : undefined,
        points: {show: !bars}
      };
    }));
    var opts = {
      width: Math.max(320, el.clientWidth || 640), height: 240,
      scales: {x: {time: bars}, y: {range: function (u, min, max) {
        return [bars ? 0 : min, max > 0 ? max * 1.1 : 1]; }}},
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
      // Line charts count (epochs, trials): whole-number ticks on x.
      axes: [bars ? {stroke: "#222"} : {stroke: "#222", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500]},
             {stroke: "#222"}],
      series: series
    };
    new uPlot(opts, [spec.x].concat(spec.series.map(function (s) { return s.values; })), el);
    el.dataset.drawn = "1";
  }
  function drawAll(root) {
    (root.querySelectorAll ? root : document).querySelectorAll("[data-chart]").forEach(draw);
    if (root.matches && root.matches("[data-chart]")) draw(root);
  }
  document.addEventListener("DOMContentLoaded", function () {
    drawAll(document);
    if (window.htmx) htmx.onLoad(drawAll);
  });
})();
