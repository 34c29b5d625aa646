// Axis ticks for the dashboard's charts: a "nice" step (1, 2, 2.5 or 5
// times a power of ten) that covers the peak in at most `count` steps, and
// labels with just enough decimals for that step (0.25 is shown as 0.25,
// not rounded to 0.3).  Pure functions, so a test page can check them.
"use strict";

var LbtwistTicks = (function () {
  var MANTISSAS = [1, 2, 2.5, 5];

  function niceTicks(peak, count) {
    count = count || 4;
    if (!(peak > 0) || !isFinite(peak)) { peak = 1; }
    var raw = peak / count;
    var exponent = Math.floor(Math.log10(raw));
    var mantissa = null;
    for (var i = 0; i < MANTISSAS.length; i++) {
      // A little tolerance: 1/4 must give 0.25, not 0.5, whatever the
      // floating-point error of the division.
      if (MANTISSAS[i] * Math.pow(10, exponent) >= raw * (1 - 1e-9)) {
        mantissa = MANTISSAS[i];
        break;
      }
    }
    if (mantissa === null) { mantissa = 1; exponent += 1; }
    var step = mantissa * Math.pow(10, exponent);
    var decimals = Math.max(0, -exponent + (mantissa === 2.5 ? 1 : 0));
    var steps = Math.max(1, Math.ceil(peak / step - 1e-9));
    var ticks = [], labels = [];
    for (var k = 0; k <= steps; k++) {
      ticks.push(k * step);
      labels.push((k * step).toFixed(decimals));
    }
    return {step: step, top: steps * step, decimals: decimals, ticks: ticks,
            labels: labels};
  }

  return {niceTicks: niceTicks};
})();
