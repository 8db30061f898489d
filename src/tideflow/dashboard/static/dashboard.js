// The dashboard's script (a file, not inline: the Content-Security-Policy allows no inline
// script). A button or link with data-confirm="question" asks before it acts.
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
  if (target && !window.confirm(target.getAttribute("data-confirm"))) {
    event.preventDefault();
  }
});
