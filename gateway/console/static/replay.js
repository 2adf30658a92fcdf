// Starts asciinema-player on every element with a data-cast attribute (the URL of an
// asciicast served by the console). A file of its own: the console's CSP allows no inline
// script. The player brings play/pause, seeking, speed and the keyboard shortcuts.
"use strict";
(function () {
  function start() {
    document.querySelectorAll("[data-cast]").forEach(function (el) {
      if (el.dataset.started) return;
      el.dataset.started = "1";
      window.AsciinemaPlayer.create(el.dataset.cast, el, {
        speed: Number(el.dataset.speed || 1),
        idleTimeLimit: 2,
        fit: "width",
        preload: true,
        controls: true,
      });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
