// circuitry dashboard: live updates and confirmations. Served from the package; no library.
// The server renders (and escapes) every fragment: this script only swaps the live region for a
// fresh copy of itself, so names and messages are never turned into markup here.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var period = parseFloat(document.body.getAttribute("data-refresh") || "0") * 1000;
  var busy = false;

  function refresh() {
    if (!live || busy || document.hidden) { return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url.toString(), { headers: { "X-Circuitry-Partial": "1" }, cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        live.innerHTML = text;
        document.body.classList.remove("stale");
        document.body.setAttribute("data-updates", String(parseInt(document.body.getAttribute("data-updates") || "0", 10) + 1));
      })
      .catch(function () { document.body.classList.add("stale"); })
      .then(function () { busy = false; });
  }

  if (live && period > 0) { window.setInterval(refresh, period); }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
})();
