// The dashboard's script (a file, not inline: the Content-Security-Policy allows no inline
// script). No build step, no dependencies.
//
// - A button or link with data-confirm="question" asks before it acts.
// - <time datetime="..."> elements, rendered in UTC by the server, are shown in the browser's
//   time zone (data-format="short": today's as a time of day), the tooltip keeps UTC.
// - Live updates: a page rendered with <body data-mark="..." data-stream="/events/stream">
//   listens to the server-sent events there. When the stream's mark differs from the page's,
//   the page is fetched again and each element with data-live and an id is swapped for its new
//   version in place: forms outside those regions (a half-typed reason, the search fields) are
//   untouched; ticked checkboxes, opened <details> and folded timeline rows inside them are
//   kept, and so is the keyboard focus; a region someone is typing in is refreshed when they
//   leave it. At most one refresh a second.
// - The workflow timeline's fold buttons hide and show a task's subtree.
"use strict";

(() => {
  const pad = (n) => String(n).padStart(2, "0");

  function localize(root) {
    for (const el of root.querySelectorAll("time[datetime]:not([data-local])")) {
      const when = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(when.getTime())) continue;
      const utc = el.textContent.trim();
      const time = `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}`;
      const date = `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())}`;
      const today = new Date();
      const sameDay =
        when.getFullYear() === today.getFullYear() &&
        when.getMonth() === today.getMonth() &&
        when.getDate() === today.getDate();
      if (el.dataset.format === "time") el.textContent = time;
      else if (el.dataset.format === "short") {
        el.textContent = sameDay ? time : `${pad(when.getMonth() + 1)}-${pad(when.getDate())} ${time}`;
      } else el.textContent = `${date} ${time}`;
      el.title = `${utc.endsWith("UTC") ? utc : utc + " UTC"} (shown in your time zone)`;
      el.dataset.local = "1";
    }
  }

  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
    if (target && !window.confirm(target.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  // --- the workflow timeline's folds ---------------------------------------------------------
  const folded = new Set();

  function applyFolds(root) {
    const rows = Array.from(root.querySelectorAll(".tl-row[data-task-id]"));
    const byParent = new Map();
    for (const row of rows) {
      const parent = row.dataset.parent || "";
      if (!byParent.has(parent)) byParent.set(parent, []);
      byParent.get(parent).push(row);
    }
    const hidden = new Set();
    const hide = (id) => {
      for (const child of byParent.get(id) || []) {
        hidden.add(child);
        hide(child.dataset.taskId);
      }
    };
    for (const id of folded) hide(id);
    for (const row of rows) {
      row.classList.toggle("hidden", hidden.has(row));
      const button = row.querySelector("button.fold");
      if (button) button.setAttribute("aria-expanded", folded.has(row.dataset.taskId) ? "false" : "true");
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button.fold[data-fold]") : null;
    if (!button) return;
    const id = button.dataset.fold;
    if (folded.has(id)) folded.delete(id);
    else folded.add(id);
    applyFolds(document);
  });

  // --- live updates ----------------------------------------------------------------------------
  const body = document.body;
  const stateEl = document.getElementById("live-state");
  let pending = false;
  let fetching = false;
  let latest = body.dataset.mark || "";
  // at most one refresh a second, however often the database changes
  const MIN_GAP = 1000;
  let lastStart = 0;
  let timer = 0;
  // a region skipped because someone was typing in it: refreshed when the focus leaves
  let stale = false;

  function setState(state, text) {
    if (!stateEl) return;
    stateEl.dataset.state = state;
    stateEl.textContent = text;
  }

  function keep(region) {
    const kept = { checked: new Set(), open: new Set() };
    for (const box of region.querySelectorAll("input[type=checkbox]:checked")) {
      kept.checked.add(`${box.name}=${box.value}`);
    }
    for (const details of region.querySelectorAll("details[id][open]")) kept.open.add(details.id);
    return kept;
  }

  function typing(el) {
    if (el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable) return true;
    return el.tagName === "INPUT" && !["checkbox", "radio", "button", "submit", "reset"].includes(el.type);
  }

  function refocus(region, old) {
    let found = old.id ? region.querySelector(`#${CSS.escape(old.id)}`) : null;
    if (!found && old.name) {
      found = Array.from(region.querySelectorAll(`[name="${CSS.escape(old.name)}"]`)).find(
        (el) => el.value === old.value,
      );
    }
    if (!found && old.getAttribute("href")) {
      found = Array.from(region.querySelectorAll("a[href]")).find(
        (el) => el.getAttribute("href") === old.getAttribute("href"),
      );
    }
    if (found) found.focus({ preventScroll: true });
  }

  function restore(region, kept) {
    for (const box of region.querySelectorAll("input[type=checkbox]")) {
      if (kept.checked.has(`${box.name}=${box.value}`)) box.checked = true;
    }
    for (const details of region.querySelectorAll("details[id]")) {
      if (kept.open.has(details.id)) details.open = true;
    }
  }

  async function refresh() {
    if (fetching) {
      pending = true;
      return;
    }
    fetching = true;
    pending = false;
    lastStart = Date.now();
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { "X-Tideflow-Live": "1" },
        cache: "no-store",
      });
      if (response.redirected || !response.ok) {
        setState("offline", response.status === 404 ? "live: gone" : "live: reload the page");
        return;
      }
      const next = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of document.querySelectorAll("[data-live][id]")) {
        const fresh = next.getElementById(region.id);
        if (!fresh) continue;
        const active = region.contains(document.activeElement) ? document.activeElement : null;
        if (active && typing(active)) {
          stale = true; // someone is typing in it: when they leave it
          continue;
        }
        const kept = keep(region);
        const copy = document.importNode(fresh, true);
        region.replaceWith(copy);
        restore(copy, kept);
        if (active) refocus(copy, active);
      }
      if (next.body.dataset.mark) body.dataset.mark = next.body.dataset.mark;
      localize(document);
      applyFolds(document);
      body.dispatchEvent(new CustomEvent("tideflow:updated"));
    } catch (error) {
      setState("reconnecting", "live: retrying");
    } finally {
      fetching = false;
      if (pending || latest !== body.dataset.mark) {
        pending = false;
        window.setTimeout(schedule, 500);
      }
    }
  }

  function schedule() {
    if (document.hidden) {
      pending = true;
      return;
    }
    if (!latest || latest === body.dataset.mark || timer) return;
    const wait = lastStart + MIN_GAP - Date.now();
    if (wait > 0) {
      timer = window.setTimeout(() => {
        timer = 0;
        schedule();
      }, wait);
      return;
    }
    refresh();
  }

  document.addEventListener("focusout", (event) => {
    if (stale && event.target instanceof Element && event.target.closest("[data-live]")) {
      stale = false;
      window.setTimeout(refresh, 0);
    }
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && pending) {
      pending = false;
      schedule();
    }
  });

  function listen() {
    const url = body.dataset.stream;
    if (!url || !("EventSource" in window)) return;
    setState("connecting", "live: connecting");
    const source = new EventSource(url, { withCredentials: true });
    const onMark = (event) => {
      setState("live", "live");
      latest = event.data;
      schedule();
    };
    source.addEventListener("hello", onMark);
    source.addEventListener("change", onMark);
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) setState("offline", "live: off (reload to retry)");
      else setState("reconnecting", "live: reconnecting");
    });
  }

  localize(document);
  applyFolds(document);
  listen();
})();
