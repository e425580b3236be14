// The audit report's drill-down: filters by principal, model, decision and time, drawn
// from the figures embedded in the page (no request leaves it: the page's CSP allows
// none). Text goes in with textContent only, never as markup (OWASP XSS prevention).
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var form = document.getElementById("filters");
  var fields = {
    principal: form.elements.namedItem("principal"),
    model: form.elements.namedItem("model"),
    decision: form.elements.namedItem("decision"),
    from: form.elements.namedItem("from"),
    to: form.elements.namedItem("to")
  };

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function when(epoch) {
    var d = new Date(epoch * 1000);
    var text = d.getUTCDate() + " " + MONTHS[d.getUTCMonth()] + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    return data.bucket_s < 60 ? text + ":" + pad(d.getUTCSeconds()) : text;
  }
  function num(n) { return n.toLocaleString("en-US"); }
  function bucketStart(offset) { return data.start + offset * data.bucket_s; }
  function option(select, value, label) {
    var o = document.createElement("option");
    o.value = value;
    o.textContent = label;
    select.appendChild(o);
  }
  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }

  // -- the filters' choices --------------------------------------------------------------
  data.principals.forEach(function (name, i) { if (name) { option(fields.principal, String(i), name); } });
  data.models.forEach(function (name, i) { if (name) { option(fields.model, String(i), name); } });
  for (var b = 0; b < data.buckets; b++) {
    option(fields.from, String(b), when(bucketStart(b)));
    option(fields.to, String(b), when(bucketStart(b + 1)));
  }
  fields.to.value = String(Math.max(0, data.buckets - 1));

  function current() {
    var from = Number(fields.from.value || 0), to = Number(fields.to.value || 0);
    if (to < from) { var t = to; to = from; from = t; }
    return {
      principal: fields.principal.value === "" ? null : Number(fields.principal.value),
      model: fields.model.value === "" ? null : Number(fields.model.value),
      decision: fields.decision.value || null,
      from: from,
      to: to
    };
  }

  // -- figures under the filters ---------------------------------------------------------
  function tally(f) {
    var out = { requests: 0, allowed: 0, denied: 0, limited: 0, reasons: {}, principals: {}, statuses: {}, series: [] };
    for (var i = f.from; i <= f.to; i++) { out.series.push([0, 0, 0]); }
    data.cells.forEach(function (c) {
      var bucket = c[0], principal = c[1], model = c[2], allowed = c[3] === 1, status = c[4], n = c[6];
      if (bucket < f.from || bucket > f.to) { return; }
      if (f.principal !== null && principal !== f.principal) { return; }
      if (f.model !== null && model !== f.model) { return; }
      if (f.decision === "allow" && !allowed) { return; }
      if (f.decision === "deny" && allowed) { return; }
      var row = out.series[bucket - f.from];
      out.requests += n;
      row[0] += n;
      if (allowed) { out.allowed += n; } else {
        out.denied += n;
        row[1] += n;
        var reason = data.reasons[c[5]], who = data.principals[principal] || "(other)";
        out.reasons[reason] = (out.reasons[reason] || 0) + n;
        out.principals[who] = (out.principals[who] || 0) + n;
      }
      if (status === 429) { out.limited += n; row[2] += n; }
      out.statuses[status] = (out.statuses[status] || 0) + n;
    });
    return out;
  }

  function ranked(counts) {
    return Object.keys(counts).map(function (k) { return [k, counts[k]]; })
      .sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : 1); }).slice(0, 20);
  }

  // -- drawing ---------------------------------------------------------------------------
  function table(id, head, rows) {
    var t = document.getElementById(id);
    var body = t.tBodies[0];
    clear(body);
    rows.forEach(function (cells) {
      var tr = document.createElement("tr");
      cells.forEach(function (cell, i) {
        var td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) { td.scope = "row"; } else { td.className = "n"; }
        td.textContent = typeof cell === "number" ? num(cell) : (cell === null ? "–" : String(cell));
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.colSpan = head;
      td.textContent = "none";
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function bars(id, rows) {
    var svg = document.getElementById(id);
    clear(svg);
    if (!rows.length) {
      svg.setAttribute("height", "24");
      svg.appendChild(el("text", { x: 0, y: 16, "class": "empty" }, "none under these filters"));
      return;
    }
    var top = Math.max.apply(null, rows.map(function (r) { return r[1]; })) || 1;
    var height = 24 * rows.length + 8;
    svg.setAttribute("viewBox", "0 0 600 " + height);
    svg.setAttribute("height", String(height));
    rows.forEach(function (r, i) {
      var y = 4 + 24 * i, width = Math.max(1, Math.round(300 * r[1] / top));
      svg.appendChild(el("text", { x: 0, y: y + 15 }, String(r[0]).slice(0, 30)));
      var rect = el("rect", { x: 210, y: y, width: width, height: 18, rx: 2, "class": "bar" });
      rect.appendChild(el("title", {}, r[0] + ": " + num(r[1])));
      svg.appendChild(rect);
      svg.appendChild(el("text", { x: 216 + width, y: y + 15 }, num(r[1])));
    });
  }

  // Lines over the time buckets: series = [{name, cls, values: [number|null]}].
  function lines(id, f, series, unit) {
    var svg = document.getElementById(id);
    clear(svg);
    var W = 960, H = 220, L = 56, R = 12, T = 10, B = 28;
    var count = f.to - f.from + 1;
    var top = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v > top) { top = v; } }); });
    top = top || 1;
    function x(i) { return L + (count === 1 ? (W - L - R) / 2 : i * (W - L - R) / (count - 1)); }
    function y(v) { return T + (H - T - B) * (1 - v / top); }
    [0, 0.5, 1].forEach(function (q) {
      svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(top * q), y2: y(top * q), "class": "grid" }));
      svg.appendChild(el("text", { x: L - 6, y: y(top * q) + 4, "text-anchor": "end" },
        unit === "ms" ? (top * q).toFixed(top < 10 ? 2 : 0) : num(Math.round(top * q))));
    });
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, "class": "axis" }));
    var ticks = Math.min(count, 6);
    for (var k = 0; k < ticks; k++) {
      var i = ticks === 1 ? 0 : Math.round(k * (count - 1) / (ticks - 1));
      var anchor = ticks > 1 && k === 0 ? "start" : (ticks > 1 && k === ticks - 1 ? "end" : "middle");
      svg.appendChild(el("text", { x: x(i), y: H - 8, "text-anchor": anchor }, when(bucketStart(f.from + i))));
    }
    series.forEach(function (s) {
      var points = [];
      s.values.forEach(function (v, i) {
        if (v === null) { return; }
        points.push(x(i).toFixed(1) + "," + y(v).toFixed(1));
        var dot = el("circle", { cx: x(i), cy: y(v), r: count > 60 ? 1.5 : 3, "class": s.cls });
        dot.appendChild(el("title", {}, s.name + ", " + when(bucketStart(f.from + i)) + ": " + (unit === "ms" ? v + " ms" : num(v))));
        svg.appendChild(dot);
      });
      if (points.length > 1) { svg.appendChild(el("polyline", { points: points.join(" "), "class": "line " + s.cls })); }
    });
  }

  function latency(f) {
    var models = data.latency.models.filter(function (name) {
      return f.model === null || data.models[f.model] === name;
    });
    var shown = models.slice(0, 3);
    var series = [], rows = [];
    shown.forEach(function (name, k) {
      var m = data.latency.models.indexOf(name);
      var p50 = [], p99 = [];
      for (var i = f.from; i <= f.to; i++) { p50.push(null); p99.push(null); }
      data.latency.points.forEach(function (p) {
        if (p[1] !== m || p[0] < f.from || p[0] > f.to) { return; }
        p50[p[0] - f.from] = p[3];
        p99[p[0] - f.from] = p[5];
        rows.push([when(bucketStart(p[0])) + " · " + name, p[2], p[3], p[4], p[5]]);
      });
      series.push({ name: name + " p50", cls: "s" + (2 * k), values: p50 });
      series.push({ name: name + " p99", cls: "s" + (2 * k + 1) + " dash", values: p99 });
    });
    lines("chart-latency", f, series, "ms");
    legend("legend-latency", series);
    rows.sort(function (a, b) { return a[0] < b[0] ? -1 : 1; });
    table("table-latency", 5, rows);
  }

  function legend(id, series) {
    var list = document.getElementById(id);
    clear(list);
    series.forEach(function (s) {
      var li = document.createElement("li");
      li.className = "c" + s.cls.split(" ")[0].slice(1);
      li.textContent = s.name;
      list.appendChild(li);
    });
  }

  // Server-rendered rows carry what they concern: data-p (principal), data-m (model) and
  // data-t0/data-t1 (their time span, epoch seconds); a row shows when it matches.
  function rows(f) {
    var principal = f.principal === null ? null : data.principals[f.principal];
    var model = f.model === null ? null : data.models[f.model];
    var t0 = bucketStart(f.from), t1 = bucketStart(f.to + 1);
    Array.prototype.forEach.call(document.querySelectorAll("tr[data-t0]"), function (tr) {
      var d = tr.dataset;
      var show = Number(d.t1) >= t0 && Number(d.t0) < t1;
      if (principal !== null && d.p !== undefined && d.p !== principal) { show = false; }
      if (model !== null && d.m !== undefined && d.m !== model) { show = false; }
      tr.hidden = !show;
    });
  }

  function render() {
    var f = current();
    var t = tally(f);
    document.getElementById("kpi-requests").textContent = num(t.requests);
    document.getElementById("kpi-allowed").textContent = num(t.allowed);
    document.getElementById("kpi-denied").textContent = num(t.denied);
    document.getElementById("kpi-limited").textContent = num(t.limited);
    var series = [
      { name: "requests", cls: "s0", values: t.series.map(function (r) { return r[0]; }) },
      { name: "denied", cls: "s1", values: t.series.map(function (r) { return r[1]; }) },
      { name: "429", cls: "s2", values: t.series.map(function (r) { return r[2]; }) }
    ];
    lines("chart-time", f, series, "requests");
    legend("legend-time", series);
    table("table-time", 4, t.series.map(function (r, i) { return [when(bucketStart(f.from + i)), r[0], r[1], r[2]]; }));
    var reasons = ranked(t.reasons), principals = ranked(t.principals);
    var statuses = Object.keys(t.statuses).sort().map(function (s) { return [s, t.statuses[s]]; });
    bars("chart-reasons", reasons);
    table("table-reasons", 2, reasons);
    bars("chart-principals", principals);
    table("table-principals", 2, principals);
    bars("chart-status", statuses);
    table("table-status", 2, statuses);
    latency(f);
    rows(f);
  }

  form.addEventListener("change", render);
  form.addEventListener("reset", function () { window.setTimeout(function () {
    fields.to.value = String(Math.max(0, data.buckets - 1));
    render();
  }, 0); });
  render();
  document.body.dataset.ready = "true";
}());
