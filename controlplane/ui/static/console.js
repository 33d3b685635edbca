// FLUX console: the one script of the console (the Content-Security-Policy allows no other).
// It refreshes the parts of a page marked data-live-src by fetching that HTML fragment from
// the control plane every data-live-interval milliseconds, and swaps it in. Nothing else:
// forms are plain HTML forms, confirmations are pages.
"use strict";

(function () {
  function startLive(el) {
    const src = el.getAttribute("data-live-src");
    const every = Math.max(1000, parseInt(el.getAttribute("data-live-interval") || "2000", 10));
    const stamp = document.querySelector("[data-live-stamp]");
    let busy = false;
    async function tick() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(src, {
          credentials: "same-origin",
          cache: "no-store",
          headers: { "X-Console-Live": "1" },
        });
        if (response.status === 401) {
          const next = encodeURIComponent(location.pathname + location.search);
          location.assign("/ui/login?reason=expired&next=" + next);
          return;
        }
        if (response.ok) {
          el.innerHTML = await response.text();
          el.setAttribute("data-live-updated", String(Date.now()));
          if (stamp) stamp.textContent = "live · updated " + new Date().toLocaleTimeString();
        } else if (stamp) {
          stamp.textContent = "live · the control plane answered " + response.status;
        }
      } catch (err) {
        if (stamp) stamp.textContent = "live · control plane unreachable, retrying";
      } finally {
        busy = false;
      }
    }
    setInterval(tick, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live-src]").forEach(startLive);
  });
})();
