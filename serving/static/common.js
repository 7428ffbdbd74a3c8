// Shared by the search and gallery pages: talking to the JSON API and turning its errors into sentences.
// Everything user-visible is written with textContent, never parsed as markup: gallery metadata is client input.
"use strict";

const xmreid = (() => {
  // Headline per error code of the API's {error, detail} body; the server's detail follows it.
  const TITLES = {
    not_an_image: "Not an image",
    unsupported_media_type: "Not an image",
    unsupported_format: "Unsupported image format",
    empty_file: "The file is empty",
    truncated_image: "The image is damaged",
    corrupt_image: "The image is damaged",
    file_too_large: "The image is too large",
    request_too_large: "The image is too large",
    too_many_pixels: "The image is too large",
    empty_gallery: "The gallery is empty",
    unknown_camera: "Unknown camera",
    invalid_top_k: "Invalid number of matches",
    validation_error: "Invalid request",
    not_ready: "The server is still loading",
    overloaded: "The server is busy",
    internal_error: "Server error",
    missing_api_key: "An API key is needed",
    invalid_api_key: "The API key was refused",
    insufficient_role: "This key may not do that",
    uploads_busy: "The server is busy",
    host_not_allowed: "Wrong server address",
  };

  /** Build an element with a class and text (the only way these pages put data on screen). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // The operator's API key: asked for once, when the server first answers that it needs one, and kept in this
  // tab's sessionStorage (gone when the tab closes; never in localStorage, cookies or the URL). Every data
  // request of the pages sends it in X-API-Key; thumbnails too (fetched, then shown from a blob URL).
  const KEY_ITEM = "xmreid.apiKey";
  const KEY_ERRORS = new Set(["missing_api_key", "invalid_api_key"]);
  let declined = false;

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_ITEM) || "";
    } catch (_) {
      return "";
    }
  }

  function withKey(options) {
    const key = storedKey();
    if (!key) return options;
    const headers = new Headers((options && options.headers) || {});
    headers.set("X-API-Key", key);
    return { ...(options || {}), headers };
  }

  /** Ask for a key after the server refused one (or asked for one); false when the operator declines. */
  function askForKey(code) {
    if (declined) return false;
    const question = code === "invalid_api_key"
      ? "The server refused this API key. Enter another key:"
      : "This server needs an API key (sent as X-API-Key). Enter your key:";
    const answer = window.prompt(question, "");
    if (!answer || !answer.trim()) {
      declined = true;
      return false;
    }
    sessionStorage.setItem(KEY_ITEM, answer.trim());
    return true;
  }

  async function send(url, options) {
    const response = await fetch(url, withKey(options));
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { ok: response.ok, status: response.status, body };
  }

  /** fetch() that resolves to {ok, status, body}; body is the parsed JSON or null. Network errors throw.
   *  A refusal for want of a valid key asks the operator for one (once) and tries again. */
  async function api(url, options) {
    const answer = await send(url, options);
    const code = answer.body && answer.body.error;
    if ((answer.status === 401 || answer.status === 403) && KEY_ERRORS.has(code) && askForKey(code)) {
      return send(url, options);
    }
    return answer;
  }

  /** Show the image at `url` in `img`: straight from the URL without a key, through fetch() with one (an
   *  <img> cannot send headers). A failure fires the image's onerror, as a failed src would. */
  async function showImage(img, url) {
    if (!storedKey()) {
      img.src = url;
      return;
    }
    try {
      const response = await fetch(url, withKey({}));
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blobUrl = URL.createObjectURL(await response.blob());
      img.addEventListener("load", () => URL.revokeObjectURL(blobUrl), { once: true });
      img.src = blobUrl;
    } catch (_) {
      if (img.onerror) img.onerror();
    }
  }

  /** {title, detail} for a failed API answer, from the server's own {error, detail}. */
  function describeError(status, body) {
    const code = body && typeof body.error === "string" ? body.error : "";
    const detail = body && typeof body.detail === "string" ? body.detail : `The server answered HTTP ${status}.`;
    const title = TITLES[code] || (status >= 500 ? "Server error" : "The request was refused");
    const requestId = body && body.request_id ? ` (request id ${body.request_id})` : "";
    return { title, detail: detail + requestId, code };
  }

  function shortFingerprint(fp) {
    return fp ? String(fp).slice(0, 12) : "unknown";
  }

  return { el, api, showImage, describeError, shortFingerprint };
})();
