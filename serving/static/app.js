// The search page: pick or drop an infrared crop (or several: a track of one person), POST it to /search (or
// /search/track), show the ranked gallery thumbnails; grouped by person or camera track when asked, each group
// a card with its best crop whose other crops expand below it.
// body[data-state] is idle | busy | results | error, so tests (and CSS) can tell where the page is.
"use strict";

(() => {
  const { el, api, showImage, describeError, shortFingerprint } = xmreid;
  const $ = (id) => document.getElementById(id);
  const THUMB_SIZE = 256;
  let queryFiles = [];
  let previewUrl = null;
  let searchSeq = 0; // answers to an older search are dropped if a newer one was started

  function setState(state) {
    document.body.dataset.state = state;
  }

  function showMessage(title, detail) {
    $("message-title").textContent = title;
    $("message-detail").textContent = detail;
    $("message").hidden = false;
  }

  function clearMessage() {
    $("message").hidden = true;
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  // ---------------------------------------------------------------- choosing the query

  function useFiles(files) {
    const chosen = [...(files || [])].filter(Boolean);
    if (!chosen.length) return;
    queryFiles = chosen;
    const file = chosen[0];
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    const preview = $("query-preview");
    preview.hidden = false;
    preview.src = previewUrl;
    // A non-image file has no preview; keep the box tidy instead of showing a broken-image icon.
    preview.onerror = () => { preview.hidden = true; $("dropzone-hint").hidden = false; };
    preview.onload = () => { $("dropzone-hint").hidden = true; };
    const name = $("file-name");
    const total = chosen.reduce((sum, f) => sum + f.size, 0);
    name.textContent = chosen.length === 1 ? `${file.name} · ${formatBytes(file.size)}`
      : `track of ${chosen.length} crops · ${formatBytes(total)}`;
    name.hidden = false;
    clearMessage();
  }

  function wireDropzone() {
    const zone = $("dropzone");
    const input = $("file-input");
    input.addEventListener("change", () => useFiles(input.files));
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      if (event.dataTransfer) useFiles(event.dataTransfer.files);
    });
    document.addEventListener("paste", (event) => {
      const item = [...(event.clipboardData ? event.clipboardData.items : [])].find((i) => i.kind === "file");
      if (item) useFiles([item.getAsFile()]);
    });
  }

  // ---------------------------------------------------------------- gallery facts (cameras, status line)

  async function loadStats(attempt = 0) {
    let answer;
    try {
      answer = await api("gallery/stats");
    } catch (err) {
      $("server-status").textContent = "server unreachable";
      $("server-status").className = "status bad";
      return;
    }
    if (answer.status === 503 && attempt < 30) { // still loading the model: try again shortly
      setTimeout(() => loadStats(attempt + 1), 1000);
      return;
    }
    if (!answer.ok) {
      const { title } = describeError(answer.status, answer.body);
      $("server-status").textContent = title;
      $("server-status").className = "status bad";
      return;
    }
    const stats = answer.body;
    const cameras = Object.entries(stats.cameras || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
    const model = shortFingerprint(stats.model_fingerprint);
    $("server-status").textContent = `${stats.size} items · ${cameras.length} cameras · ${stats.kind} · model ${model}`;
    $("server-status").className = "status ok";
    const list = $("camera-list");
    list.replaceChildren();
    if (!cameras.length) list.append(el("span", "muted", "the gallery is empty"));
    for (const [camera, count] of cameras) {
      const label = el("label", "chip");
      const box = el("input");
      box.type = "checkbox";
      box.name = "camera";
      box.value = camera;
      label.append(box, el("span", null, `cam ${camera}`), el("small", null, count));
      list.append(label);
    }
  }

  // ---------------------------------------------------------------- searching

  function renderTimings(timings, model) {
    for (const key of ["decode", "embed", "search", "total"]) {
      $(`t-${key}`).textContent = `${Number(timings[key]).toFixed(1)} ms`;
    }
    for (const key of ["fuse", "rerank"]) { // only in track / re-ranked answers
      const present = timings[key] !== null && timings[key] !== undefined;
      const value = $(`t-${key}`);
      value.hidden = !present;
      value.previousElementSibling.hidden = !present;
      value.textContent = present ? `${Number(timings[key]).toFixed(1)} ms` : "";
    }
    $("model-line").textContent = model ? `${model.name} · ${model.height}×${model.width} → ${model.dim}-d · ` +
      `model ${shortFingerprint(model.fingerprint)}` : "";
    $("timings").hidden = false;
  }

  function resultCard(hit) {
    const card = el("li", "result");
    card.dataset.rank = hit.rank;
    card.dataset.galleryId = hit.gallery_id;
    card.dataset.score = hit.score;

    const frame = el("div", "thumb");
    const img = el("img");
    img.alt = `Gallery item ${hit.gallery_id}`;
    img.decoding = "async";
    img.onerror = () => { frame.replaceChildren(el("span", "no-image", "image unavailable")); };
    showImage(img, `gallery/${encodeURIComponent(hit.gallery_id)}/thumbnail?size=${THUMB_SIZE}`);
    frame.append(img, el("span", "rank", `#${hit.rank}`));

    const meta = el("div", "meta");
    const score = el("div", "score");
    const bar = el("span", "bar");
    const fill = el("span", "fill");
    // Cosine similarity is in [-1, 1]; show [0, 1] as the bar, negatives as empty.
    fill.style.width = `${Math.max(0, Math.min(1, hit.score)) * 100}%`;
    bar.append(fill);
    score.append(el("span", "score-value", hit.score.toFixed(3)), bar);
    const facts = el("div", "facts");
    const known = (value) => value !== null && value !== undefined;
    facts.append(el("span", "camera", known(hit.camera) ? `cam ${hit.camera}` : "cam ?"));
    if (known(hit.person_label)) {
      facts.append(el("span", "person", `person ${hit.person_label}`));
    }
    facts.append(el("span", "gid", `id ${hit.gallery_id}`));
    const source = el("div", "source", hit.source || "no source");
    source.title = hit.source || "";
    meta.append(score, facts, source);
    card.append(frame, meta);
    return card;
  }

  // A group: its best crop's card, how many crops it holds, and the other crops the search found, expandable.
  function groupCard(group) {
    const card = resultCard(group.best);
    card.classList.add("group");
    card.dataset.groupKey = group.key;
    card.dataset.count = group.count;
    const meta = card.querySelector(".meta");
    meta.append(el("div", "group-count", group.count === 1 ? "1 crop" : `${group.count} crops`));
    const others = group.members.slice(1);
    if (others.length) {
      const details = el("details", "members");
      details.append(el("summary", null, `show ${others.length} more crop${others.length === 1 ? "" : "s"}`));
      const strip = el("ol", "member-list");
      for (const member of others) {
        const item = el("li", "member");
        item.dataset.galleryId = member.gallery_id;
        const img = el("img");
        img.alt = `Gallery item ${member.gallery_id}`;
        img.loading = "lazy"; // fetched when the group is expanded (with a key: at once, see showImage)
        showImage(img, `gallery/${encodeURIComponent(member.gallery_id)}/thumbnail?size=${THUMB_SIZE}`);
        item.append(img, el("span", "member-score", member.score.toFixed(3)));
        strip.append(item);
      }
      details.append(strip);
      meta.append(details);
    }
    return card;
  }

  const GROUP_NAMES = { person: "person", camera_track: "camera track" };

  function renderResults(answer, topK, cameras, options) {
    const list = $("results");
    const grouped = Array.isArray(answer.groups);
    list.replaceChildren(...(grouped ? answer.groups.map(groupCard) : answer.results.map(resultCard)));
    $("empty-state").hidden = true;
    $("results-head").hidden = false;
    const n = grouped ? answer.groups.length : answer.results.length;
    const noun = grouped ? GROUP_NAMES[options.groupBy] : "match";
    $("results-title").textContent = `${n} ${noun}${n === 1 ? "" : (noun.endsWith("ch") ? "es" : "s")}`;
    const where = cameras.length ? `cameras ${cameras.join(", ")}` : "all cameras";
    const query = options.crops > 1 ? ` · track of ${options.crops} crops` : "";
    const order = options.rerank ? "re-ranked (k-reciprocal)" : "by cosine similarity";
    $("results-sub").textContent = `Best first ${order} · top ${topK} · ${where}${query}`;
    renderTimings(answer.timings_ms, answer.model);
  }

  async function search(event) {
    if (event) event.preventDefault();
    clearMessage();
    if (!queryFiles.length) {
      showMessage("No image chosen", "Choose or drop an infrared crop first.");
      setState("error");
      return;
    }
    const topK = Number($("top-k").value);
    const cameras = [...document.querySelectorAll("#camera-list input:checked")].map((box) => box.value);
    const groupBy = $("group-by").value;
    const rerank = $("rerank").checked;
    const params = new URLSearchParams({ top_k: String(topK) });
    for (const camera of cameras) params.append("camera", camera);
    if (groupBy !== "none") params.append("group_by", groupBy);
    if (rerank) params.append("rerank", "true");
    const body = new FormData();
    const track = queryFiles.length > 1;
    for (const file of queryFiles) body.append(track ? "images" : "image", file, file.name);
    const path = track ? "search/track" : "search";

    const seq = ++searchSeq;
    setState("busy");
    $("search-button").disabled = true;
    let answer;
    try {
      answer = await api(`${path}?${params}`, { method: "POST", body });
    } catch (err) {
      answer = { ok: false, status: 0, body: { error: "", detail: "The server could not be reached; is it running?" } };
    } finally {
      if (seq === searchSeq) $("search-button").disabled = false;
    }
    if (seq !== searchSeq) return;
    if (!answer.ok) {
      const { title, detail } = describeError(answer.status, answer.body);
      showMessage(title, detail);
      $("results").replaceChildren();
      $("results-head").hidden = true;
      $("empty-state").hidden = false;
      setState("error");
      return;
    }
    renderResults(answer.body, topK, cameras, { groupBy, rerank, crops: queryFiles.length });
    setState("results");
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireDropzone();
    $("search-form").addEventListener("submit", search);
    loadStats();
  });
})();
