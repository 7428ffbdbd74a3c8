// The search page: pick or drop an infrared crop, POST it to /search, show the ranked gallery thumbnails.
// body[data-state] is idle | busy | results | error, so tests (and CSS) can tell where the page is.
"use strict";

(() => {
  const { el, api, describeError, shortFingerprint } = xmreid;
  const $ = (id) => document.getElementById(id);
  const THUMB_SIZE = 256;
  let queryFile = null;
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

  function useFile(file) {
    if (!file) return;
    queryFile = file;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    const preview = $("query-preview");
    preview.hidden = false;
    preview.src = previewUrl;
    // A non-image file has no preview; keep the box tidy instead of showing a broken-image icon.
    preview.onerror = () => { preview.hidden = true; $("dropzone-hint").hidden = false; };
    preview.onload = () => { $("dropzone-hint").hidden = true; };
    const name = $("file-name");
    name.textContent = `${file.name} · ${formatBytes(file.size)}`;
    name.hidden = false;
    clearMessage();
  }

  function wireDropzone() {
    const zone = $("dropzone");
    const input = $("file-input");
    input.addEventListener("change", () => useFile(input.files[0]));
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) useFile(file);
    });
    document.addEventListener("paste", (event) => {
      const item = [...(event.clipboardData ? event.clipboardData.items : [])].find((i) => i.kind === "file");
      if (item) useFile(item.getAsFile());
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
    img.src = `gallery/${encodeURIComponent(hit.gallery_id)}/thumbnail?size=${THUMB_SIZE}`;
    img.onerror = () => { frame.replaceChildren(el("span", "no-image", "image unavailable")); };
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

  function renderResults(answer, topK, cameras) {
    const list = $("results");
    list.replaceChildren(...answer.results.map(resultCard));
    $("empty-state").hidden = true;
    $("results-head").hidden = false;
    const n = answer.results.length;
    $("results-title").textContent = n === 1 ? "1 match" : `${n} matches`;
    const where = cameras.length ? `cameras ${cameras.join(", ")}` : "all cameras";
    $("results-sub").textContent = `Best first by cosine similarity · top ${topK} · ${where}`;
    renderTimings(answer.timings_ms, answer.model);
  }

  async function search(event) {
    if (event) event.preventDefault();
    clearMessage();
    if (!queryFile) {
      showMessage("No image chosen", "Choose or drop an infrared crop first.");
      setState("error");
      return;
    }
    const topK = Number($("top-k").value);
    const cameras = [...document.querySelectorAll("#camera-list input:checked")].map((box) => box.value);
    const params = new URLSearchParams({ top_k: String(topK) });
    for (const camera of cameras) params.append("camera", camera);
    const body = new FormData();
    body.append("image", queryFile, queryFile.name);

    const seq = ++searchSeq;
    setState("busy");
    $("search-button").disabled = true;
    let answer;
    try {
      answer = await api(`search?${params}`, { method: "POST", body });
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
    renderResults(answer.body, topK, cameras);
    setState("results");
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireDropzone();
    $("search-form").addEventListener("submit", search);
    loadStats();
  });
})();
