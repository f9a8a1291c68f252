// Stoker dashboard: times in the browser's own time zone.
(function () {
  "use strict";
  for (const el of document.querySelectorAll("time[data-at]")) {
    const at = Number(el.dataset.at);
    if (Number.isFinite(at)) {
      el.title = el.textContent;
      el.textContent = new Date(at * 1000).toLocaleString();
    }
  }
})();
