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
  };

  /** Build an element with a class and text (the only way these pages put data on screen). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /** fetch() that resolves to {ok, status, body}; body is the parsed JSON or null. Network errors throw. */
  async function api(url, options) {
    const response = await fetch(url, options);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { ok: response.ok, status: response.status, body };
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

  return { el, api, describeError, shortFingerprint };
})();
