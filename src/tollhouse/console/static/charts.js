/* Tollhouse console charts: uPlot time series drawn from a JSON data element (CSP: no inline script).

   Markup: <div class="chart" data-chart="ID"></div> and
           <script type="application/json" id="ID">{...}</script>
   Data:   {"x": [epoch seconds...], "series": [{"label": "team-a", "values": [number|null...]}...],
            "stacked": true|false, "unit": "usd"|"count", "timezone": "Europe/Paris", "step": "day"|"hour",
            "lines": [{"label": "cap", "values": [...]}]   (optional, never stacked, dashed)}
   Stacked series are drawn as cumulative bands; the legend and cursor show each series' own value.
   Charts are (re)drawn on load and after an htmx swap. */
(function () {
  "use strict";
  var PALETTE = ["#3b6ea5", "#e07b39", "#3f9c5a", "#c94a4a", "#8a63b8", "#8c6d46", "#d670b3", "#6f6f6f",
                 "#b5b83a", "#2fb5c4"];

  function money(v) {
    if (v == null) return "";
    var abs = Math.abs(v);
    if (abs >= 1000) return "$" + v.toLocaleString("en-US", {maximumFractionDigits: 0});
    if (abs >= 1) return "$" + v.toFixed(2);
    if (abs === 0) return "$0";
    return "$" + v.toPrecision(2);
  }

  function number(v) {
    return v == null ? "" : v.toLocaleString("en-US", {maximumFractionDigits: 2});
  }

  function fill(color) {
    return color + "cc";
  }

  function draw(holder) {
    var source = document.getElementById(holder.getAttribute("data-chart"));
    if (!source || holder.classList.contains("drawn")) return;
    var data = JSON.parse(source.textContent);
    var series = data.series || [];
    var lines = data.lines || [];
    var fmt = data.unit === "usd" ? money : number;
    var stacked = !!data.stacked;
    var columns = [data.x];
    var running = data.x.map(function () { return null; });
    var opts = {
      width: Math.max(320, holder.clientWidth || 800),
      height: Number(holder.getAttribute("data-height") || 260),
      series: [{}],
      bands: [],
      axes: [{}, {values: function (u, ticks) { return ticks.map(fmt); }, size: 70}],
      scales: {x: {time: true}},
      legend: {live: true}
    };
    if (data.timezone && uPlot.tzDate) {
      opts.tzDate = function (ts) { return uPlot.tzDate(new Date(ts * 1000), data.timezone); };
    }
    series.forEach(function (s, i) {
      var values = s.values;
      var color = PALETTE[i % PALETTE.length];
      if (stacked) {
        // a bucket no series has a value for (the future) stays empty
        running = running.map(function (acc, j) {
          return acc == null && values[j] == null ? null : (acc || 0) + (values[j] || 0);
        });
        columns.push(running.slice());
      } else {
        columns.push(values);
      }
      opts.series.push({
        label: s.label,
        stroke: color,
        fill: stacked ? fill(color) : undefined,
        width: 1.5,
        points: {show: data.x.length <= 40},
        value: stacked ? function (u, v, si, idx) { return idx == null ? "" : fmt(values[idx]); }
                       : function (u, v) { return fmt(v); }
      });
    });
    if (stacked) {
      // each series fills down to the one below it (series i+1 above series i); uPlot draws bands between them
      for (var i = series.length; i > 1; i--) {
        opts.bands.push({series: [i, i - 1], fill: fill(PALETTE[(i - 1) % PALETTE.length])});
      }
      opts.series.forEach(function (s, i) { if (i > 1) s.fill = undefined; });
    }
    lines.forEach(function (l, i) {
      columns.push(l.values);
      opts.series.push({label: l.label, stroke: l.color || "#222", dash: [6, 4], width: 1.5,
                        value: function (u, v) { return fmt(v); }});
    });
    holder.textContent = "";
    holder.classList.add("drawn");
    new uPlot(opts, columns, holder);
  }

  function drawAll(root) {
    var holders = (root || document).querySelectorAll(".chart[data-chart]");
    for (var i = 0; i < holders.length; i++) draw(holders[i]);
    // share bars: width from data-share (0..1); set through the DOM, as CSP forbids inline style attributes
    var bars = (root || document).querySelectorAll(".bar .fill[data-share]");
    for (var j = 0; j < bars.length; j++) {
      bars[j].style.width = Math.min(100, 100 * Number(bars[j].getAttribute("data-share"))) + "%";
    }
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSettle", function () { drawAll(document); });
})();
