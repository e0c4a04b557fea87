// Rewind training history: the Copy buttons. The pages need no other script.
"use strict";

// navigator.clipboard exists only in secure contexts (https, or http on localhost); over plain
// http on another host the hidden-textarea fallback copies instead.
function copyFallback(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (err) {
    ok = false;
  }
  document.body.removeChild(area);
  return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
}

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text).catch(() => copyFallback(text));
  }
  return copyFallback(text);
}

function flash(button, cls, label) {
  button.classList.remove("copied", "failed");
  button.classList.add(cls);
  button.textContent = label;
  window.setTimeout(() => {
    button.classList.remove(cls);
    button.textContent = "Copy";
  }, 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy[data-copy-target]")) {
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copyTarget);
      if (!source) {
        return;
      }
      copyText(source.textContent).then(
        () => flash(button, "copied", "Copied"),
        () => flash(button, "failed", "Select and copy"),
      );
    });
  }
});
