(function () {
  "use strict";
  var meta = JSON.parse(document.getElementById("sw-meta").textContent);
  var items = JSON.parse(document.getElementById("sw-data").textContent);
  var svg = document.getElementById("chart");
  var NS = svg.namespaceURI;
  var card = document.getElementById("card");
  var rangeText = document.getElementById("range");
  var GUTTER = 132, RIGHT = 14, AXIS = 30, BAND = 26, ROW = 12, PAD = 6, MAX_ROWS = 6;
  var KINDS = ["tell", "ask", "reply", "error"];
  var ARROW = " \u2192 ";
  var names = meta.names;
  var t0 = meta.t0, span = Math.max(meta.t1 - meta.t0, 1000), margin = span * 0.02;
  var home = [t0 - margin, t0 + span + margin];
  var vs = home[0], ve = home[1];
  var MIN_WIDTH = 5, MAX_WIDTH = (home[1] - home[0]) * 8;
  // Keyed by actor names from the log, so without a prototype ("__proto__" is a name too).
  var plotW = 600, laneTop = dict(), laneRows = dict(), height = AXIS;
  var marks = [], bars = [], labels = [], hot = null, drag = null, frame = 0;

  function nm(v) { return typeof v === "number" ? names[v] : v; }
  function dict() { return Object.create(null); }
  function el(tag, attrs, parent) {
    var node = document.createElementNS(NS, tag);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function pad(n, w) { var s = String(n); while (s.length < w) { s = "0" + s; } return s; }
  function iso(us) {
    var d = new Date(Math.floor(us / 1000));
    return d.toISOString().slice(0, 23) + pad(((us % 1000) + 1000) % 1000, 3) + "Z";
  }
  function clock(us, step) {
    var d = new Date(Math.floor(us / 1000));
    var text = pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2);
    if (step >= 3600e6) { return d.toISOString().slice(5, 10) + " " + text; }
    text += ":" + pad(d.getUTCSeconds(), 2);
    if (step < 1e6) { text += "." + pad(d.getUTCMilliseconds(), 3); }
    if (step < 1e3) { text += pad(((us % 1000) + 1000) % 1000, 3); }
    return text;
  }
  function duration(us) {
    var ms = us / 1000;
    if (ms < 1) { return (us).toFixed(0) + " \u00b5s"; }
    if (ms < 1000) { return ms.toFixed(ms < 10 ? 3 : 1) + " ms"; }
    if (ms < 120000) { return (ms / 1000).toFixed(3) + " s"; }
    return (ms / 60000).toFixed(1) + " min";
  }

  // --- layout: lanes, with rows below the marks for spans that overlap ---
  var byLane = dict();
  items.forEach(function (it, i) {
    if (it[0] !== 1) { return; }
    var lane = nm(it[2]);
    (byLane[lane] = byLane[lane] || []).push(i);
  });
  var rowOf = {};
  Object.keys(byLane).forEach(function (lane) {
    var ends = [];
    byLane[lane].sort(function (a, b) { return items[a][3] - items[b][3]; });
    byLane[lane].forEach(function (i) {
      var it = items[i], row = -1;
      for (var r = 0; r < ends.length; r++) { if (ends[r] <= it[3]) { row = r; break; } }
      if (row < 0) {
        if (ends.length < MAX_ROWS) { row = ends.length; ends.push(0); }
        else { row = ends.indexOf(Math.min.apply(null, ends)); }
      }
      ends[row] = Math.max(it[4], it[3] + 1);
      rowOf[i] = row;
    });
    laneRows[lane] = ends.length;
  });

  var grid = el("g", {"class": "grid"}, svg);
  var lanesG = el("g", {"class": "lanes"}, svg);
  var axis = el("g", {"class": "axis"}, svg);
  var clipRect = el("rect", {x: GUTTER, y: 0, width: 1, height: 1},
                    el("clipPath", {id: "plot-clip"}, el("defs", {}, svg)));
  var plots = dict(), laneRule = [];
  meta.lanes.forEach(function (lane) {
    var h = BAND + (laneRows[lane] || 0) * ROW + PAD;
    laneTop[lane] = height;
    var g = el("g", {"class": "lane", "data-actor": lane, transform: "translate(0," + height + ")"},
               lanesG);
    laneRule.push(el("rect", {"class": "lane-bg", x: 0, y: 0, width: 1, height: h}, g));
    laneRule.push(el("line", {"class": "lane-rule", x1: 0, y1: h, x2: 1, y2: h}, g));
    var name = el("text", {"class": "lane-name", x: 8, y: 17}, g);
    name.textContent = lane.length > 18 ? lane.slice(0, 17) + "\u2026" : lane;
    el("title", {}, name).textContent = lane;
    plots[lane] = el("g", {"class": "plot", "clip-path": "url(#plot-clip)",
                           transform: "translate(0," + (-height) + ")"}, g);
    height += h;
  });
  svg.setAttribute("height", height + 4);
  clipRect.setAttribute("height", height);
  if (!items.length) {
    el("text", {"class": "empty", x: GUTTER + 10, y: AXIS + 20}, svg).textContent =
      meta.records ? "nothing drawn" : "no records";
  }

  function addMarks(errors) {
    items.forEach(function (it, i) {
      if (it[0] !== 0 || (it[1][3] === 3) !== errors) { return; }
      var rec = it[1], lane = nm(rec[1]);
      if (!(lane in plots)) { return; }
      var node = el("circle", {"class": "mark " + KINDS[rec[3]], r: errors ? 5 : 3.5,
                               cy: laneTop[lane] + (rec[3] >= 2 ? 18 : 8), cx: 0,
                               "data-i": i, "data-seq": rec[4]}, plots[lane]);
      marks.push([node, rec[0]]);
    });
  }
  addMarks(false);
  addMarks(true);  // errors last, so nothing covers them
  items.forEach(function (it, i) {
    if (it[0] !== 1) { return; }
    var lane = nm(it[2]);
    if (!(lane in plots)) { return; }
    var kind = meta.spanKinds[it[1]], state = meta.states[it[6]];
    var y = laneTop[lane] + BAND + rowOf[i] * ROW;
    var node = el("rect", {"class": "span " + kind + " state-" + state, y: y,
                           height: ROW - 3, rx: 2, x: 0, width: 1, "data-i": i,
                           "data-kind": kind, "data-state": state, "data-label": it[5],
                           "data-seq": it[8][4]}, null);
    plots[lane].insertBefore(node, plots[lane].firstChild);
    bars.push([node, it[3], it[4]]);
    if (kind !== "chunk" || it[7] > 1) {
      var text = el("text", {"class": "span-label", y: y + ROW - 5, x: 0}, plots[lane]);
      text.textContent = it[5];
      labels.push([text, it[3], it[4], it[5].length * 5.6 + 8]);
    }
  });
  document.getElementById("drawn").textContent = "; drawn: " + marks.length + " marks, " +
    bars.length + " spans";

  // --- drawing at the current zoom ---
  function px(us) {
    var x = GUTTER + (us - vs) / (ve - vs) * plotW;
    return Math.max(GUTTER - 60, Math.min(GUTTER + plotW + 60, x));
  }
  function niceStep(raw) {
    var p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }
  function drawAxis() {
    while (grid.firstChild) { grid.removeChild(grid.firstChild); }
    while (axis.firstChild) { axis.removeChild(axis.firstChild); }
    if (!meta.records) { return; }
    el("line", {"class": "base", x1: GUTTER, x2: GUTTER + plotW, y1: AXIS - 1, y2: AXIS - 1},
       axis);
    var step = Math.max(1, niceStep((ve - vs) / Math.max(2, plotW / 120)));
    for (var t = Math.ceil(vs / step) * step; t <= ve; t += step) {
      var x = px(t);
      el("line", {x1: x, x2: x, y1: AXIS, y2: height}, grid);
      el("line", {x1: x, x2: x, y1: AXIS - 6, y2: AXIS - 1}, axis);
      el("text", {"class": "tick", x: x, y: AXIS - 10, "text-anchor": "middle"}, axis)
        .textContent = clock(t, step);
    }
  }
  function draw() {
    frame = 0;
    var i;
    for (i = 0; i < marks.length; i++) { marks[i][0].setAttribute("cx", px(marks[i][1])); }
    for (i = 0; i < bars.length; i++) {
      var x0 = px(bars[i][1]), x1 = px(bars[i][2]);
      bars[i][0].setAttribute("x", x0);
      bars[i][0].setAttribute("width", Math.max(2, x1 - x0));
    }
    for (i = 0; i < labels.length; i++) {
      var a = px(labels[i][1]), b = px(labels[i][2]), room = b - a >= labels[i][3];
      labels[i][0].setAttribute("x", a + 4);
      labels[i][0].setAttribute("visibility", room ? "visible" : "hidden");
    }
    drawAxis();
  }
  function changed() {
    svg.setAttribute("data-t0", ((vs - t0) / 1000).toFixed(3));
    svg.setAttribute("data-t1", ((ve - t0) / 1000).toFixed(3));
    rangeText.textContent = "showing " + duration(ve - vs) + " from " + iso(Math.round(vs));
    if (!frame) { frame = requestAnimationFrame(draw); }
  }
  function resize() {
    var width = Math.max(400, svg.parentNode.clientWidth);
    plotW = width - GUTTER - RIGHT;
    svg.setAttribute("width", width);
    svg.setAttribute("viewBox", "0 0 " + width + " " + (height + 4));
    clipRect.setAttribute("width", plotW);
    laneRule.forEach(function (node) {
      node.setAttribute(node.tagName === "line" ? "x2" : "width", width);
    });
    changed();
  }

  // --- zoom and pan ---
  function zoom(factor, at) {
    var width = Math.max(MIN_WIDTH, Math.min(MAX_WIDTH, (ve - vs) * factor));
    var share = (at - vs) / (ve - vs);
    vs = at - share * width;
    ve = vs + width;
    changed();
  }
  function timeAt(clientX) {
    var box = svg.getBoundingClientRect();
    var x = Math.max(0, Math.min(plotW, clientX - box.left - GUTTER));
    return vs + x / plotW * (ve - vs);
  }
  function middle() { return (vs + ve) / 2; }
  function reset() { vs = home[0]; ve = home[1]; changed(); }
  svg.addEventListener("wheel", function (event) {
    event.preventDefault();
    var unit = event.deltaMode === 1 ? 0.05 : event.deltaMode === 2 ? 1 : 0.0015;
    zoom(Math.exp(event.deltaY * unit), timeAt(event.clientX));
  }, {passive: false});
  document.getElementById("zoom-in").addEventListener("click", function () {
    zoom(0.5, middle());
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoom(2, middle());
  });
  document.getElementById("zoom-reset").addEventListener("click", reset);
  document.addEventListener("keydown", function (event) {
    if (event.key === "+" || event.key === "=") { zoom(0.5, middle()); }
    else if (event.key === "-") { zoom(2, middle()); }
    else if (event.key === "0") { reset(); }
  });
  svg.addEventListener("mousedown", function (event) {
    if (event.button !== 0) { return; }
    drag = {x: event.clientX, vs: vs, ve: ve};
    svg.classList.add("dragging");
    hide();
    event.preventDefault();
  });
  window.addEventListener("mousemove", function (event) {
    if (!drag) { return; }
    var shift = (drag.x - event.clientX) / plotW * (drag.ve - drag.vs);
    vs = drag.vs + shift;
    ve = drag.ve + shift;
    changed();
  });
  window.addEventListener("mouseup", function () {
    drag = null;
    svg.classList.remove("dragging");
  });
  window.addEventListener("resize", resize);

  // --- the card ---
  function add(parent, tag, text, cls) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    parent.appendChild(node);
    return node;
  }
  function describe(rec, parent, brief) {
    var dl = add(parent, "dl");
    function row(key, value, cls) { add(dl, "dt", key); add(dl, "dd", value, cls); }
    row("seq", String(rec[4]));
    row("ts", iso(rec[0]));
    row("kind", KINDS[rec[3]]);
    row("from" + ARROW + "to", nm(rec[1]) + ARROW + nm(rec[2]));
    row("message", nm(rec[5]));
    row("corr", rec[6] === null ? "-" : String(rec[6]));
    if (rec[7] !== null) { row("duration", rec[7].toFixed(3) + " ms"); }
    if (!brief) { row("run", nm(rec[8])); }
    if (rec[10]) { row("error", rec[10], "failure"); }
    if (rec[9] && rec[9] !== "{}") { add(parent, "pre", rec[9]); }
  }
  function show(i, event) {
    var it = items[i];
    while (card.firstChild) { card.removeChild(card.firstChild); }
    if (it[0] === 0) {
      add(card, "h2", nm(it[1][5]));
      describe(it[1], card, false);
    } else {
      add(card, "h2", it[5]);
      var dl = add(card, "dl");
      add(dl, "dt", "span"); add(dl, "dd", meta.spanKinds[it[1]] + ", " + meta.states[it[6]]);
      add(dl, "dt", "lasts"); add(dl, "dd", duration(it[4] - it[3]));
      if (it[7] > 1) { add(dl, "dt", "merged"); add(dl, "dd", it[7] + " spans"); }
      add(card, "h3", "opened by");
      describe(it[8], card, true);
      if (it[9]) { add(card, "h3", "closed by"); describe(it[9], card, true); }
    }
    card.classList.add("visible");
    place(event);
  }
  function place(event) {
    var w = card.offsetWidth, h = card.offsetHeight;
    var x = event.clientX + 14, y = event.clientY + 14;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, event.clientX - w - 14); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, event.clientY - h - 14); }
    card.style.left = x + "px";
    card.style.top = y + "px";
  }
  function hide() {
    card.classList.remove("visible");
    if (hot) { hot.classList.remove("hot"); hot = null; }
  }
  svg.addEventListener("mouseover", function (event) {
    var target = event.target, i = target.getAttribute && target.getAttribute("data-i");
    if (drag || i === null || i === undefined) { return; }
    if (hot) { hot.classList.remove("hot"); }
    hot = target;
    hot.classList.add("hot");
    show(Number(i), event);
  });
  svg.addEventListener("mousemove", function (event) {
    if (hot && !drag) { place(event); }
  });
  svg.addEventListener("mouseout", function (event) {
    var to = event.relatedTarget;
    if (!to || !to.getAttribute || to.getAttribute("data-i") === null) { hide(); }
  });

  resize();
  draw();
})();
