// Small behaviours htmx does not cover. No inline scripts: the CSP forbids them.
(function () {
  "use strict";

  function composer() {
    return document.getElementById("composer");
  }

  // Enter sends, Shift+Enter adds a line (IME composition is left alone).
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target.id !== "id_text" || event.key !== "Enter" || event.shiftKey || event.isComposing) {
      return;
    }
    event.preventDefault();
    var form = composer();
    if (form && target.value.trim() !== "") {
      form.requestSubmit();
    }
  });

  function scrollToEnd() {
    var list = document.getElementById("turn-list");
    if (list && list.lastElementChild) {
      list.lastElementChild.scrollIntoView({ block: "end" });
    }
  }

  // A sent message is cleared from the box only once the portal has stored it.
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = composer();
    if (!form || event.detail.elt !== form) {
      return;
    }
    var xhr = event.detail.xhr;
    if (event.detail.successful && xhr && xhr.status === 200) {
      form.querySelector("#id_text").value = "";
      scrollToEnd();
    } else if (!event.detail.successful) {
      var box = document.getElementById("composer-error");
      if (box && !box.textContent.trim()) {
        box.textContent = "The portal could not be reached; your message is still in the box. Try again.";
      }
    }
  });

  document.addEventListener("htmx:sseMessage", function () {
    var list = document.getElementById("turn-list");
    if (!list) return;
    // Follow the answer only if the reader is already near the bottom.
    var nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
    if (nearBottom) scrollToEnd();
  });

  document.addEventListener("DOMContentLoaded", scrollToEnd);
})();
