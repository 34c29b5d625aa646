// The lbtwist dashboard: polls the admin API every second and redraws the
// backend tables and a traffic chart.  Plain JS and canvas, no library, so
// the page works with no internet access.
"use strict";

(function () {
  var HISTORY = 120;                     // seconds of traffic kept for the chart
  var COLORS = ["#4a90d9", "#e67e22", "#2e8b57", "#9b59b6", "#c0392b",
                "#16a085", "#d35400", "#7f8c8d", "#f1c40f", "#34495e"];
  var history = {};                      // "pool/backend" -> [rate, ...]
  var lastTotals = {};                   // "pool/backend" -> total at last poll
  var lastTime = null;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function ms(seconds) {
    return seconds === null || seconds === undefined ? "-" : (seconds * 1000).toFixed(1);
  }

  function getJSON(path) {
    return fetch(path, {cache: "no-store"}).then(function (r) {
      if (!r.ok && r.status !== 503) { throw new Error(path + ": HTTP " + r.status); }
      return r.json();
    });
  }

  function renderPools(pools) {
    var section = document.getElementById("pools");
    section.textContent = "";
    pools.forEach(function (pool) {
      section.appendChild(el("h2", {}, "Pool " + pool.name + " "));
      section.lastChild.appendChild(el("small", {}, "(" + pool.policy + ", " +
        pool.eligible + "/" + pool.backends.length + " eligible, " +
        pool.noBackend + " refused for lack of a backend)"));
      var table = el("table", {"class": "backends", "data-pool": pool.name});
      var head = el("tr");
      ["backend", "state", "weight", "active", "total", "failures", "resp ms",
       "probe ms", "share %"].forEach(function (h, i) {
        head.appendChild(el("th", i > 1 ? {"class": "num"} : {}, h));
      });
      table.appendChild(el("thead")).appendChild(head);
      var body = table.appendChild(el("tbody"));
      pool.backends.forEach(function (b) {
        var row = el("tr", {"data-backend": b.name});
        row.appendChild(el("td", {"class": "name"}, b.name));
        row.appendChild(el("td", {"class": "state state-" + b.state}, b.state));
        row.appendChild(el("td", {"class": "num weight"}, String(b.weight)));
        row.appendChild(el("td", {"class": "num active"}, String(b.active)));
        row.appendChild(el("td", {"class": "num total"}, String(b.total)));
        row.appendChild(el("td", {"class": "num failures", "title":
          JSON.stringify(b.failuresByKind)}, String(b.failures)));
        row.appendChild(el("td", {"class": "num resp"}, ms(b.responseTime)));
        row.appendChild(el("td", {"class": "num probe"}, ms(b.probeLatency)));
        var share = el("td", {"class": "num share"}, b.share.toFixed(1));
        var bar = el("span", {"class": "bar"});
        bar.style.width = Math.round(b.share) + "px";
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
      [l.name, l.mode, l.pool, l.endpoint].forEach(function (v) {
        row.appendChild(el("td", {}, v));
      });
      row.appendChild(el("td", {"class": "num active"}, String(l.active)));
      row.appendChild(el("td", {"class": "num accepted"}, String(l.accepted)));
      body.appendChild(row);
    });
  }

  function record(pools, now) {
    var seen = {};
    pools.forEach(function (pool) {
      pool.backends.forEach(function (b) {
        var key = pool.name + "/" + b.name;
        seen[key] = true;
        var series = history[key] || (history[key] = []);
        if (lastTime !== null && key in lastTotals) {
          var rate = Math.max(0, b.total - lastTotals[key]) / Math.max(0.001, now - lastTime);
          series.push(rate);
        } else {
          series.push(0);
        }
        while (series.length > HISTORY) { series.shift(); }
        lastTotals[key] = b.total;
      });
    });
    for (var key in history) {
      if (!seen[key]) { delete history[key]; delete lastTotals[key]; }
    }
    lastTime = now;
  }

  function drawChart() {
    var canvas = document.getElementById("chart");
    var ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, pad = 30;
    ctx.clearRect(0, 0, w, h);
    var keys = Object.keys(history).sort();
    var peak = 1;
    keys.forEach(function (k) {
      history[k].forEach(function (v) { peak = Math.max(peak, v); });
    });
    ctx.strokeStyle = "#e3e6ea";
    ctx.fillStyle = "#666";
    ctx.font = "11px sans-serif";
    for (var i = 0; i <= 4; i++) {
      var y = pad / 2 + (h - pad) * i / 4;
      ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
      ctx.fillText((peak * (4 - i) / 4).toFixed(peak < 4 ? 1 : 0), 2, y + 4);
    }
    var legend = document.getElementById("legend");
    legend.textContent = "";
    keys.forEach(function (k, n) {
      var series = history[k], color = COLORS[n % COLORS.length];
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      series.forEach(function (v, j) {
        var x = w - (series.length - 1 - j) * (w - pad) / (HISTORY - 1);
        var y = pad / 2 + (h - pad) * (1 - v / peak);
        if (j === 0) { ctx.moveTo(x, y); } else { ctx.lineTo(x, y); }
      });
      ctx.stroke();
      var item = el("span", {}, "");
      var swatch = el("i");
      swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(k + " " +
        (series.length ? series[series.length - 1].toFixed(1) : "0") + "/s"));
      legend.appendChild(item);
    });
  }

  function poll() {
    Promise.all([getJSON("/api/pools"), getJSON("/api/listeners"),
                 getJSON("/api/health")]).then(function (answers) {
      var pools = answers[0].pools;
      record(pools, Date.now() / 1000);
      renderPools(pools);
      renderListeners(answers[1]);
      drawChart();
      var status = document.getElementById("status");
      status.textContent = answers[2].status;
      status.className = "status " + answers[2].status;
      document.getElementById("updated").textContent =
        "updated " + new Date().toLocaleTimeString();
    }).catch(function (e) {
      var status = document.getElementById("status");
      status.textContent = "admin API unreachable";
      status.className = "status error";
    });
  }

  poll();
  setInterval(poll, 1000);
})();
