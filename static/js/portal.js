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

  // What a failed send means for the user; the message always stays in the box.
  function failureMessage(status) {
    var keep = " Your message is still in the box.";
    if (status === 403) return "This page is out of date or your session has ended: reload the page." + keep;
    if (status === 503) return "The portal's database is unavailable right now; nothing was saved. Try again in a minute." + keep;
    if (status === 429) return "Too many requests; wait a moment and try again." + keep;
    if (status === 400) return "The portal could not read that message." + keep;
    if (status >= 500) return "The portal hit an error; nothing was sent. Try again." + keep;
    return "The portal could not be reached. Try again." + keep;
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
      if (box) {
        box.textContent = failureMessage(xhr ? xhr.status : 0);
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
