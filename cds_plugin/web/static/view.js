// Explanation view: the Print button and SHAP on request with a progress indicator.
// The page works without this file (the SHAP form posts and comes back with the result); with it,
// SHAP is fetched in place. Results are inserted with DOM methods only (no innerHTML), so nothing
// from the server is ever parsed as markup.
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function miniBar(direction, fraction) {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "mini");
    svg.setAttribute("viewBox", "0 0 64 8");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var track = document.createElementNS(SVG, "rect");
    track.setAttribute("class", "mini-track");
    track.setAttribute("width", "64");
    track.setAttribute("height", "8");
    var bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("class", "mini-bar mini-" + direction);
    bar.setAttribute("width", (64 * fraction).toFixed(1));
    bar.setAttribute("height", "8");
    svg.appendChild(track);
    svg.appendChild(bar);
    return svg;
  }

  // The same table the server renders for a stored SHAP result (view.html, method_table).
  function shapTable(result) {
    var table = el("table", "method-table");
    table.id = "table-shap";
    table.appendChild(el("caption", "visually-hidden", "SHAP: the resources that count most"));
    var head = el("thead");
    var headRow = el("tr");
    var c1 = el("th", null, "Resource");
    c1.scope = "col";
    var c2 = el("th", "num", "Contribution");
    c2.scope = "col";
    headRow.appendChild(c1);
    headRow.appendChild(c2);
    head.appendChild(headRow);
    table.appendChild(head);
    var body = el("tbody");
    var top = 0;
    result.evidence.forEach(function (r) { top = Math.max(top, Math.abs(r.score)); });
    result.evidence.forEach(function (r) {
      var row = el("tr", "dir-" + r.direction);
      row.setAttribute("data-reference", r.reference);
      var what = el("th");
      what.scope = "row";
      what.appendChild(el("span", "what", r.what));
      if (r.value) { what.appendChild(document.createTextNode(" ")); what.appendChild(el("span", "value", r.value)); }
      if (r.date) { what.appendChild(document.createTextNode(" ")); what.appendChild(el("span", "date", r.date)); }
      var cell = el("td", "num");
      var score = el("span", "score");
      var glyph = el("span", "glyph", r.direction === "up" ? "▲" : r.direction === "down" ? "▼" : "");
      glyph.setAttribute("aria-hidden", "true");
      score.appendChild(glyph);
      score.appendChild(document.createTextNode(r.score_text));
      cell.appendChild(score);
      cell.appendChild(miniBar(r.direction, top ? Math.abs(r.score) / top : 0));
      row.appendChild(what);
      row.appendChild(cell);
      body.appendChild(row);
    });
    table.appendChild(body);
    return table;
  }

  function setUpPrint() {
    var button = document.getElementById("print-button");
    if (!button) return;
    button.hidden = false;
    button.addEventListener("click", function () { window.print(); });
  }

  function setUpShap() {
    var form = document.getElementById("shap-form");
    if (!form) return;
    var button = document.getElementById("shap-button");
    var progress = document.getElementById("shap-progress");
    var elapsed = document.getElementById("shap-elapsed");
    var status = document.getElementById("shap-status");
    var container = document.getElementById("shap-result");

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var started = Date.now();
      button.disabled = true;
      progress.hidden = false;
      status.classList.remove("error");
      status.textContent = "Computing SHAP…";
      elapsed.textContent = "0 s";
      var timer = window.setInterval(function () {
        elapsed.textContent = Math.round((Date.now() - started) / 1000) + " s";
      }, 500);

      function fail(message) {
        window.clearInterval(timer);
        progress.hidden = true;
        button.disabled = false;
        status.classList.add("error");
        status.textContent = message;
      }

      fetch(form.action, {
        method: "POST",
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
        referrerPolicy: "no-referrer"
      })
        .then(function (response) {
          return response.json().catch(function () { return {}; }).then(function (body) {
            if (!response.ok) throw new Error(body.error || "The server answered " + response.status + ".");
            return body;
          });
        })
        .then(function (result) {
          window.clearInterval(timer);
          form.remove();
          progress.remove();
          container.insertBefore(shapTable(result), status);
          if (result.completeness) {
            container.insertBefore(el("p", "completeness", result.completeness), status);
          }
          status.textContent = "SHAP computed in " + result.elapsed_s.toFixed(1) + " s (up to " +
            result.max_evals + " runs of the model).";
          container.setAttribute("data-state", "done");
          container.focus();
        })
        .catch(function (error) {
          fail(error && error.message ? error.message : "SHAP could not be computed.");
        });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpPrint();
    setUpShap();
  });
})();
