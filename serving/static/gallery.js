// The gallery overview: GET /gallery/stats rendered for people (counts per camera, model, index).
"use strict";

(() => {
  const { el, api, describeError, shortFingerprint } = xmreid;
  const $ = (id) => document.getElementById(id);

  function show(id, value) {
    $(id).textContent = value === null || value === undefined || value === "" ? "–" : String(value);
  }

  function fact(value) {
    return typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
  }

  function render(stats) {
    const cameras = Object.entries(stats.cameras || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
    show("s-size", stats.size);
    show("s-cameras", cameras.length);
    show("s-labelled", stats.labelled);
    show("s-kind", stats.kind);
    show("s-fingerprint", stats.fingerprint);
    show("s-model-fingerprint", stats.model_fingerprint);
    show("s-dim", stats.dim);
    show("s-next-id", stats.next_id);
    show("s-created", stats.created);
    show("s-saved", stats.saved);

    const most = Math.max(1, ...cameras.map(([, n]) => n));
    const body = $("camera-table").tBodies[0];
    body.replaceChildren();
    for (const [camera, count] of cameras) {
      const row = el("tr");
      row.dataset.camera = camera;
      const bar = el("span", "bar");
      const fill = el("span", "fill");
      fill.style.width = `${(100 * count) / most}%`;
      bar.append(fill);
      const cell = el("td", "wide");
      cell.append(bar);
      row.append(el("td", null, `cam ${camera}`), el("td", "count", count), cell);
      body.append(row);
    }
    if (!cameras.length) {
      const row = el("tr");
      const cell = el("td", "muted", "The gallery is empty: add crops with POST /gallery or `python -m serving index`.");
      cell.colSpan = 3;
      row.append(cell);
      body.append(row);
    }

    const facts = $("index-facts");
    facts.replaceChildren();
    for (const [key, value] of Object.entries(stats.index || {}).sort()) {
      facts.append(el("dt", null, key.replaceAll("_", " ")), el("dd", "mono", fact(value)));
    }
    $("server-status").textContent = `${stats.size} items · model ${shortFingerprint(stats.model_fingerprint)}`;
    $("server-status").className = "status ok";
    document.body.dataset.state = "results";
  }

  async function load(attempt = 0) {
    let answer;
    try {
      answer = await api("gallery/stats");
    } catch (err) {
      answer = { ok: false, status: 0, body: { detail: "The server could not be reached; is it running?" } };
    }
    if (answer.status === 503 && attempt < 30) {
      setTimeout(() => load(attempt + 1), 1000);
      return;
    }
    if (!answer.ok) {
      const { title, detail } = describeError(answer.status, answer.body);
      $("message-title").textContent = title;
      $("message-detail").textContent = detail;
      $("message").hidden = false;
      $("server-status").textContent = title;
      $("server-status").className = "status bad";
      document.body.dataset.state = "error";
      return;
    }
    render(answer.body);
  }

  document.addEventListener("DOMContentLoaded", () => load());
})();
