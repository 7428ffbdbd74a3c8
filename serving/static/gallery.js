// The gallery overview: GET /gallery/stats rendered for people (counts per camera, model, index), and the
// gallery's tracks (GET /gallery/tracks) on one time line: which camera saw which track, from when to when.
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
    loadTracks();
  }

  /** The tracks on a shared time axis (only when the gallery has tracks, e.g. from video ingestion). */
  async function loadTracks() {
    let answer;
    try {
      answer = await api("gallery/tracks?limit=500");
    } catch (_) {
      return;
    }
    if (!answer.ok || !answer.body || !answer.body.tracks.length) return;
    const { tracks, total } = answer.body;
    const times = tracks.filter((t) => t.first_seen).map((t) => [Date.parse(t.first_seen), Date.parse(t.last_seen)]);
    const start = Math.min(...times.map(([a]) => a));
    const span = Math.max(1, Math.max(...times.map(([, b]) => b)) - start);
    const body = $("track-table").tBodies[0];
    body.replaceChildren();
    for (const track of tracks) {
      const row = el("tr");
      row.dataset.camera = track.camera;
      row.dataset.trackId = track.track_id;
      const cell = el("td", "wide");
      if (track.first_seen) {
        const bar = el("span", "bar");
        const fill = el("span", "fill");
        const from = Date.parse(track.first_seen) - start;
        const to = Date.parse(track.last_seen) - start;
        fill.style.marginLeft = `${(100 * from) / span}%`;
        fill.style.width = `${Math.max(0.5, (100 * (to - from)) / span)}%`;
        bar.append(fill);
        cell.append(bar);
      }
      row.append(el("td", null, `cam ${track.camera}`), el("td", "mono", track.track_id),
                 el("td", null, track.first_seen || "–"), el("td", null, track.last_seen || "–"),
                 el("td", "count", track.items), cell);
      body.append(row);
    }
    $("tracks-sub").textContent = total > tracks.length ? `(${tracks.length} of ${total}, earliest first)`
                                                        : `(${total}, earliest first)`;
    $("tracks-panel").hidden = false;
  }

  document.addEventListener("DOMContentLoaded", () => load());
})();
