// The lbtwist dashboard: polls the admin API every second and redraws the
// overview (rates, errors and response times per pool and in total), two
// charts, the backend tables, the listeners and their routes, and the balancers
// of a cluster with the state of its store.  Plain JS and canvas, no
// library, so the page works with no internet access.  When the API stops
// answering the page is dimmed and says since when.
"use strict";

(function () {
  var HISTORY = 120;                     // polls (seconds) kept for the charts
  var COLORS = ["#4a90d9", "#e67e22", "#2e8b57", "#9b59b6", "#c0392b",
                "#16a085", "#d35400", "#7f8c8d", "#f1c40f", "#34495e"];
  var POOL_COLORS = ["#c0392b", "#8e44ad", "#d35400", "#2c3e50", "#b8860b"];
  var TOTAL_COLOR = "#222";
  var traffic = series();                // "pool/backend" -> requests/s
  var errors = series();                 // pool -> errors/s
  var routeRates = series();             // "listener/route" -> requests/s
  var colors = {};                       // key -> colour, kept once given
  var staleSince = null;
  // The admin server's clock less the page's, in seconds, from the Date
  // header of the last /api/pools answer (null until one had it), so an
  // ejection's end, given on the server's clock, reads as time left.
  var serverOffset = null;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function ms(seconds) {
    if (seconds === null || seconds === undefined) { return "-"; }
    var v = seconds * 1000;
    return v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0);
  }

  function perSecond(rate) {
    if (rate === null || rate === undefined) { return "-"; }
    return rate.toFixed(rate < 10 ? 2 : 1);
  }

  function clock(date) {
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" +
      two(date.getSeconds());
  }

  // One colour per key for as long as the page lives, so a backend keeps
  // its colour in the chart, the legend and its share bar.
  function colorOf(key, palette) {
    if (!(key in colors)) {
      var used = 0;
      for (var k in colors) { if (colors[k].palette === palette) { used++; } }
      colors[key] = {palette: palette, color: palette[used % palette.length]};
    }
    return colors[key].color;
  }

  // Rates per second of counters, from one poll to the next, kept for the
  // last HISTORY polls.
  function series() {
    return {values: {}, last: {}, lastTime: null};
  }

  function record(s, counters, now) {
    for (var key in counters) {
      var values = s.values[key] || (s.values[key] = []);
      var rate = 0;
      if (s.lastTime !== null && key in s.last) {
        rate = Math.max(0, counters[key] - s.last[key]) / Math.max(0.001, now - s.lastTime);
      }
      values.push(rate);
      while (values.length > HISTORY) { values.shift(); }
      s.last[key] = counters[key];
    }
    for (var old in s.values) {
      if (!(old in counters)) { delete s.values[old]; delete s.last[old]; }
    }
    s.lastTime = now;
  }

  function getJSON(path, onResponse) {
    return fetch(path, {cache: "no-store"}).then(function (r) {
      if (!r.ok && r.status !== 503) { throw new Error(path + ": HTTP " + r.status); }
      if (onResponse) { onResponse(r); }
      return r.json();
    });
  }

  // The Date header has whole seconds: the server's time was within the
  // second after it, so its middle is the best guess.
  function noteServerTime(response) {
    var date = Date.parse(response.headers.get("Date") || "");
    serverOffset = isNaN(date) ? null : (date + 500 - Date.now()) / 1000;
  }

  function duration(seconds) {
    var s = Math.ceil(seconds);
    if (s < 60) { return s + "s"; }
    var rest = s % 60;
    return Math.floor(s / 60) + "m" + (rest < 10 ? "0" : "") + rest + "s";
  }

  function tag(kind, text, title) {
    var attrs = {"class": "tag tag-" + kind};
    if (title) { attrs.title = title; }
    return el("span", attrs, text);
  }

  // "ejected" and the time left, when the server's time is known and the
  // end is plausibly on the same (wall) clock; else just "ejected".
  function ejectedTag(b) {
    var title = "ejected as an outlier (ejection " + b.ejections + ")";
    var text = "ejected";
    if (serverOffset !== null && typeof b.ejectedUntil === "number") {
      var left = b.ejectedUntil - (Date.now() / 1000 + serverOffset);
      if (left > 0 && left < 7 * 86400) {
        text += " " + duration(left);
        title += " until " + clock(new Date(b.ejectedUntil * 1000)) + " server time";
      }
    }
    return tag("ejected", text, title);
  }

  // The weight, or while slow start ramps it up, effective/full weight.
  function weightCell(b) {
    var ramping = b.effectiveWeight !== null && b.effectiveWeight !== undefined;
    if (!ramping) { return el("td", {"class": "num weight"}, String(b.weight)); }
    var eff = b.effectiveWeight;
    var td = el("td", {"class": "num weight ramping", "title": "effective weight " +
      eff + " of " + b.weight + " while slow start ramps it up"},
      eff.toFixed(eff < 1 ? 2 : 1) + "/" + b.weight);
    td.appendChild(tag("ramping", "ramping"));
    return td;
  }

  function summaryRow(name, view, eligible, isTotal) {
    var recent = view.recent || {};
    var rates = recent.responseRates || {};
    var p = recent.responsePercentiles || {};
    var row = el("tr", {"data-summary": name});
    if (isTotal) { row.className = "total"; }
    row.appendChild(el("td", {"class": "name"}, name));
    var cells = [
      ["reqRate", recent.requestRate],
      ["errRate", recent.errorRate],
      ["r5xx", recent.requestRate === undefined ? undefined : rates["5xx"] || 0],
      ["r4xx", recent.requestRate === undefined ? undefined : rates["4xx"] || 0],
      ["noBackendRate", recent.noBackendRate],
      ["queueRate", recent.queueFullRate === undefined ? undefined :
        recent.queueFullRate + recent.queueTimeoutRate],
    ];
    cells.forEach(function (c) {
      var td = el("td", {"class": "num " + c[0]}, perSecond(c[1]));
      if (c[0] !== "reqRate" && c[1] > 0) { td.className += " bad"; }
      row.appendChild(td);
    });
    ["p50", "p90", "p99"].forEach(function (q) {
      row.appendChild(el("td", {"class": "num " + q}, ms(p[q])));
    });
    row.appendChild(el("td", {"class": "num eligible"}, eligible));
    return row;
  }

  function renderSummary(pools, total) {
    var body = document.querySelector("#summary tbody");
    body.textContent = "";
    pools.forEach(function (pool) {
      body.appendChild(summaryRow(pool.name, pool, pool.eligible + "/" +
        pool.backends.length, false));
    });
    body.appendChild(summaryRow("total", total, "", true));
    if (total.recent) {
      document.getElementById("window").textContent = Math.round(total.recent.seconds);
    }
  }

  function renderPools(pools) {
    var section = document.getElementById("pools");
    section.textContent = "";
    pools.forEach(function (pool) {
      section.appendChild(el("h2", {}, "Pool " + pool.name + " "));
      section.lastChild.appendChild(el("small", {}, "(" + pool.policy + "; since start: " +
        pool.requests + " sent, " + pool.errors + " errors, " + pool.noBackend +
        " refused for lack of a backend, " + (pool.queueFull + pool.queueTimeouts) +
        " refused by the queue)"));
      var table = el("table", {"class": "backends", "data-pool": pool.name});
      var head = el("tr");
      ["backend", "state", "weight", "active", "total", "failures", "last ms",
       "p50 ms", "p90 ms", "p99 ms", "probe ms", "share %"].forEach(function (h, i) {
        head.appendChild(el("th", i > 1 ? {"class": "num"} : {}, h));
      });
      table.appendChild(el("thead")).appendChild(head);
      var body = table.appendChild(el("tbody"));
      pool.backends.forEach(function (b) {
        var color = colorOf(pool.name + "/" + b.name, COLORS);
        var p = b.responsePercentiles || {};
        var row = el("tr", {"data-backend": b.name});
        var name = el("td", {"class": "name"});
        var swatch = el("i", {"class": "swatch"});
        swatch.style.background = color;
        name.appendChild(swatch);
        name.appendChild(document.createTextNode(b.name));
        if (b.backup) {
          name.appendChild(tag("backup", "backup",
            "takes clients only while no primary backend is eligible"));
        }
        if (b.discovered) {
          name.appendChild(tag("dns", "DNS", "discovered through DNS"));
        }
        row.appendChild(name);
        var state = el("td", {"class": "state state-" + b.state}, b.state);
        if (b.ejected) { state.appendChild(ejectedTag(b)); }
        row.appendChild(state);
        row.appendChild(weightCell(b));
        row.appendChild(el("td", {"class": "num active"}, String(b.active)));
        row.appendChild(el("td", {"class": "num total"}, String(b.total)));
        row.appendChild(el("td", {"class": "num failures", "title":
          JSON.stringify(b.failuresByKind)}, String(b.failures)));
        row.appendChild(el("td", {"class": "num resp"}, ms(b.responseTime)));
        ["p50", "p90", "p99"].forEach(function (q) {
          row.appendChild(el("td", {"class": "num " + q}, ms(p[q])));
        });
        row.appendChild(el("td", {"class": "num probe"}, ms(b.probeLatency)));
        var share = el("td", {"class": "num share"}, b.share.toFixed(1));
        var bar = el("span", {"class": "bar", "data-color": color});
        bar.style.width = Math.round(b.share) + "px";
        bar.style.background = color;
        share.appendChild(bar);
        row.appendChild(share);
        body.appendChild(row);
      });
      section.appendChild(table);
    });
  }

  function renderListeners(listeners) {
    var body = document.querySelector("#listeners tbody");
    body.textContent = "";
    listeners.forEach(function (l) {
      var row = el("tr", {"data-listener": l.name});
      // No pool: what no route matches gets a 404 (or a close).
      [l.name, l.mode, l.pool === null ? "routes only" : l.pool, l.endpoint].forEach(function (v) {
        row.appendChild(el("td", {}, v));
      });
      row.appendChild(el("td", {"class": "num active"}, String(l.active)));
      row.appendChild(el("td", {"class": "num accepted"}, String(l.accepted)));
      var http = l.mode === "http";
      ["1xx", "2xx", "3xx", "4xx", "5xx"].forEach(function (cls) {
        var n = (l.responses || {})[cls] || 0;
        var td = el("td", {"class": "num s" + cls}, http ? String(n) : "-");
        if (n > 0 && (cls === "4xx" || cls === "5xx")) { td.className += " bad"; }
        row.appendChild(td);
      });
      row.appendChild(el("td", {"class": "num refused"}, http ? String(l.refused) : "-"));
      body.appendChild(row);
    });
  }

  // What a route matches, for people: "host=a.example path-prefix=/v1/".
  function matchText(route) {
    var parts = [];
    var match = (route && route.match) || {};
    for (var k in match) {
      var v = match[k];
      if (Array.isArray(v)) { v = v.join(","); }
      else if (typeof v === "object") { v = Object.keys(v).join(","); }
      parts.push(k + "=" + v);
    }
    return parts.length ? parts.join(" ") : "everything";
  }

  // Where a route sends its requests: a pool, a weighted split, or an
  // answer of its own.
  function targetText(route) {
    if (!route) { return "-"; }
    if (route.pool) { return "pool " + route.pool; }
    if (route.pools) {
      var names = Object.keys(route.pools), total = 0;
      names.forEach(function (p) { total += route.pools[p]; });
      return names.map(function (p) {
        return p + " " + Math.round(100 * route.pools[p] / total) + "%";
      }).join(" / ");
    }
    if (route.redirect) {
      return "redirect " + (route.redirect.code || "") + " " +
        (route.redirect.location || route.redirect.scheme + "://");
    }
    if (route.respond) { return "respond " + route.respond.status; }
    return "-";
  }

  // One table per listener with routes: each route, what it matches, where
  // it sends, its rate now and its counts since start.
  function renderRoutes(listeners) {
    var section = document.getElementById("routes");
    section.textContent = "";
    var counts = {};
    listeners.forEach(function (l) {
      (l.routes || []).forEach(function (r) { counts[l.name + "/" + r.name] = r.requests; });
    });
    record(routeRates, counts, Date.now() / 1000);
    listeners.forEach(function (l) {
      if (!l.routes || !l.routes.length) { return; }
      var http = l.mode === "http";
      section.appendChild(el("h2", {}, "Routes of " + l.name + " "));
      section.lastChild.appendChild(el("small", {}, "(" + l.mode +
        "; in order, the first that matches is taken" +
        (l.defaultRoute ? "; default last" : "") + ")"));
      var table = el("table", {"class": "routes", "data-routes": l.name});
      var head = el("tr");
      var columns = ["route", "matches", "sends to", "req/s", "requests"].concat(
        http ? ["2xx", "3xx", "4xx", "5xx", "rate-limited"] : [], ["mean ms"]);
      columns.forEach(function (h, i) {
        head.appendChild(el("th", i > 2 ? {"class": "num"} : {}, h));
      });
      table.appendChild(el("thead")).appendChild(head);
      var body = table.appendChild(el("tbody"));
      l.routes.forEach(function (r) {
        var key = l.name + "/" + r.name;
        var row = el("tr", {"data-route": key});
        row.appendChild(el("td", {"class": "name"}, r.name));
        row.appendChild(el("td", {"class": "match"}, r.name === "default" &&
          l.defaultRoute ? "no route above" : matchText(r.route)));
        row.appendChild(el("td", {"class": "target"}, targetText(r.route)));
        var rates = routeRates.values[key] || [];
        row.appendChild(el("td", {"class": "num rate"},
          perSecond(rates.length ? rates[rates.length - 1] : 0)));
        row.appendChild(el("td", {"class": "num requests"}, String(r.requests)));
        if (http) {
          ["2xx", "3xx", "4xx", "5xx"].forEach(function (cls) {
            var n = (r.responses || {})[cls] || 0;
            var td = el("td", {"class": "num s" + cls}, String(n));
            if (n > 0 && (cls === "4xx" || cls === "5xx")) { td.className += " bad"; }
            row.appendChild(td);
          });
          var limited = el("td", {"class": "num limited"}, String(r.rateLimited));
          if (r.rateLimited > 0) { limited.className += " bad"; }
          row.appendChild(limited);
        }
        row.appendChild(el("td", {"class": "num mean"}, ms(r.meanDuration)));
        body.appendChild(row);
      });
      section.appendChild(table);
    });
  }

  // The cluster registry's store (etcd) and the balancers sharing it, when
  // this balancer is in a cluster; the section stays hidden otherwise.
  function renderCluster(cluster) {
    var section = document.getElementById("cluster");
    section.hidden = !cluster;
    if (!cluster) { return; }
    var store = document.getElementById("clusterStore");
    var since = clock(new Date(cluster.since * 1000));
    store.textContent = cluster.store === "connected"
      ? "(store connected since " + since + ", revision " + cluster.revision + ")"
      : "(store unreachable since " + since + ": serving revision " + cluster.revision +
        ", changes refused)";
    store.className = cluster.store === "connected" ? "" : "bad";
    if (cluster.store !== "connected") { return; }
    getJSON("/api/instances").then(function (answer) {
      var body = document.querySelector("#instances tbody");
      body.textContent = "";
      (answer.instances || []).forEach(function (i) {
        var row = el("tr", {"data-instance": i.name});
        row.appendChild(el("td", {}, i.name + (i.name === cluster.instance ? " (this one)" : "")));
        row.appendChild(el("td", {}, i.address || "-"));
        row.appendChild(el("td", {}, i.version));
        row.appendChild(el("td", {"class": "num"}, String(i.revision)));
        body.appendChild(row);
      });
    }, function () {});
  }

  // Draw lines (each {key, label, color, values}) and their total, dashed,
  // on a canvas, with nice Y ticks; fill the legend with the same colours.
  function drawChart(canvasId, legendId, lines) {
    var canvas = document.getElementById(canvasId);
    var ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, left = 44, top = 8, bottom = 8;
    ctx.clearRect(0, 0, w, h);
    var length = 0;
    lines.forEach(function (l) { length = Math.max(length, l.values.length); });
    var total = [];
    for (var j = 0; j < length; j++) {
      var sum = 0;
      lines.forEach(function (l) {
        var offset = length - l.values.length;
        if (j >= offset) { sum += l.values[j - offset]; }
      });
      total.push(sum);
    }
    var peak = 0;
    total.forEach(function (v) { peak = Math.max(peak, v); });
    var axis = LbtwistTicks.niceTicks(peak, 4);
    canvas.setAttribute("data-ticks", axis.labels.join(","));
    function y(v) { return top + (h - top - bottom) * (1 - v / axis.top); }
    function x(j, n) { return w - (n - 1 - j) * (w - left) / (HISTORY - 1); }
    ctx.font = "11px sans-serif";
    ctx.textAlign = "right";
    axis.ticks.forEach(function (t, i) {
      ctx.strokeStyle = "#e3e6ea";
      ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(left, y(t)); ctx.lineTo(w, y(t)); ctx.stroke();
      ctx.fillStyle = "#666";
      ctx.fillText(axis.labels[i], left - 4, y(t) + 4);
    });
    function stroke(values, color, dashed) {
      ctx.strokeStyle = color;
      ctx.lineWidth = dashed ? 2.5 : 2;
      ctx.setLineDash(dashed ? [6, 4] : []);
      ctx.beginPath();
      values.forEach(function (v, k) {
        if (k === 0) { ctx.moveTo(x(k, values.length), y(v)); }
        else { ctx.lineTo(x(k, values.length), y(v)); }
      });
      ctx.stroke();
      ctx.setLineDash([]);
    }
    var legend = document.getElementById(legendId);
    legend.textContent = "";
    function item(label, color, values, dashed) {
      var span = el("span", {"data-series": label, "data-color": color});
      var swatch = el("i", dashed ? {"class": "total"} : {});
      if (!dashed) { swatch.style.background = color; }
      span.appendChild(swatch);
      span.appendChild(document.createTextNode(label + " " +
        perSecond(values.length ? values[values.length - 1] : 0) + "/s"));
      legend.appendChild(span);
    }
    lines.forEach(function (l) {
      stroke(l.values, l.color, false);
      item(l.label, l.color, l.values, false);
    });
    stroke(total, TOTAL_COLOR, true);
    item("total", TOTAL_COLOR, total, true);
  }

  function recordAndDraw(pools, now) {
    var totals = {}, errorCounts = {};
    pools.forEach(function (pool) {
      errorCounts[pool.name] = pool.errors;
      pool.backends.forEach(function (b) { totals[pool.name + "/" + b.name] = b.total; });
    });
    record(traffic, totals, now);
    record(errors, errorCounts, now);
    drawChart("chart", "legend", Object.keys(traffic.values).sort().map(function (k) {
      return {label: k, color: colorOf(k, COLORS), values: traffic.values[k]};
    }));
    drawChart("errors", "errorLegend", Object.keys(errors.values).sort().map(function (k) {
      return {label: k, color: colorOf("pool " + k, POOL_COLORS), values: errors.values[k]};
    }));
  }

  function answering() {
    staleSince = null;
    document.body.classList.remove("stale");
    document.getElementById("stale").hidden = true;
  }

  function notAnswering() {
    if (staleSince === null) { staleSince = new Date(); }
    document.body.classList.add("stale");
    var note = document.getElementById("stale");
    note.textContent = "admin API not answering since " + clock(staleSince);
    note.hidden = false;
    var status = document.getElementById("status");
    status.textContent = "admin API unreachable";
    status.className = "status error";
  }

  function poll() {
    Promise.all([getJSON("/api/pools", noteServerTime), getJSON("/api/listeners"),
                 getJSON("/api/health")]).then(function (answers) {
      var pools = answers[0].pools;
      answering();
      renderSummary(pools, answers[0].total);
      recordAndDraw(pools, Date.now() / 1000);
      renderPools(pools);
      renderListeners(answers[1]);
      renderCluster(answers[2].cluster);
      renderRoutes(answers[1]);
      var status = document.getElementById("status");
      status.textContent = answers[2].status;
      status.className = "status " + answers[2].status;
      document.getElementById("updated").textContent = "updated " + clock(new Date());
    }, notAnswering);
  }

  poll();
  setInterval(poll, 1000);
})();
