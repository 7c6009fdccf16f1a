// The console's little JavaScript: the CSRF header on every htmx request, htmx's handling of error answers, and
// confirmation prompts. Charts are drawn by charts.js.
"use strict";

document.addEventListener("htmx:configRequest", function (event) {
  var token = document.body.getAttribute("data-csrf");
  if (token) event.detail.headers["X-CSRF-Token"] = token;
});

if (window.htmx) {
  // Swap error answers too: the server renders them as a message for #flash (HX-Retarget).
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: true },
  ];
  htmx.config.historyCacheSize = 0; // pages hold balances and keys: nothing kept in localStorage
}

// <form data-confirm="..."> asks before it submits (plain forms; htmx has hx-confirm).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var message = form.getAttribute && form.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
  // One click, one submit: a second click while the first is on its way does nothing.
  if (!event.defaultPrevented && form.getAttribute && form.hasAttribute("data-once")) {
    if (form.dataset.sent) event.preventDefault();
    form.dataset.sent = "1";
  }
});
