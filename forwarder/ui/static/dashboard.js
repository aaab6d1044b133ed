// taskfabric dashboard: the one script. Every element with data-refresh="<ms>" and an id is
// refreshed in place from the same page, fetched again (same origin, same session cookie), every
// <ms> milliseconds while the tab is visible. No library, nothing from another origin.
"use strict";
(function () {
  function refresh(element) {
    if (document.hidden) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Refresh": "1" } })
      .then(function (response) {
        if (response.redirected || !response.ok) { window.location.reload(); return null; }
        return response.text();
      })
      .then(function (text) {
        if (text === null) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById(element.id);
        if (fresh) { element.replaceWith(fresh); watch(fresh); }
      })
      .catch(function () { /* offline for a moment: try again at the next tick */ });
  }
  function watch(element) {
    var period = parseInt(element.getAttribute("data-refresh"), 10);
    if (period > 0 && element.id) {
      window.setTimeout(function () { refresh(element); }, period);
    }
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(watch);
  });
})();
