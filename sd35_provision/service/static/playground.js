// The playground: a form over the service's own OpenAI images API.
// The API key lives in sessionStorage only (gone when the tab closes) and is
// sent as the Bearer token, as any API client would. URLs are relative so the
// page also works behind a proxy that serves the service under a path prefix.
"use strict";

const KEY_STORAGE = "sd35-playground-key";
const $ = (id) => document.getElementById(id);

function authHeaders() {
  const key = $("key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(status, body) {
  const message = body && body.error && body.error.message ? body.error.message : "HTTP " + status;
  $("error-message").textContent = "The service answered " + status + ": " + message;
  $("error-body").textContent = typeof body === "string" ? body : JSON.stringify(body, null, 2);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-message").textContent = "";
  $("error-body").textContent = "";
}

async function readBody(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

async function loadOptions() {
  const response = await fetch("playground/options", { headers: authHeaders() });
  const body = await readBody(response);
  if (!response.ok) {
    setStatus("Not ready: " + (body.error ? body.error.message : "HTTP " + response.status));
    showError(response.status, body);
    // Still loading the model: ask again when the service says to (a wrong key waits for a new one).
    if (response.status === 503) setTimeout(loadOptions, 1000 * Number(response.headers.get("Retry-After") || 10));
    return;
  }
  clearError();
  const sizes = $("sizes");
  sizes.replaceChildren(...body.sizes.map((size) => new Option(size, size)));
  if (!$("size").value) $("size").value = body.default_size;
  if (!$("steps").value) $("steps").value = body.default_steps;
  if (!$("guidance").value) $("guidance").value = body.default_guidance;
  if (!$("strength").value) $("strength").value = body.default_strength;
  $("steps").max = body.max_steps;
  $("guidance").max = body.max_guidance;
  $("n").max = body.max_n;
  $("prompt").maxLength = body.max_prompt_chars;
  setStatus("Ready. Sizes: " + body.sizes.join(", ") + " (or any the service accepts)");
}

// Form values that are set, as the API's field names; numbers stay text here.
function fields() {
  const values = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    size: $("size").value.trim(),
    num_inference_steps: $("steps").value,
    guidance_scale: $("guidance").value,
    seed: $("seed").value,
    n: $("n").value,
  };
  return Object.fromEntries(Object.entries(values).filter(([, value]) => value !== ""));
}

function generationRequest() {
  const body = { response_format: "b64_json" };
  for (const [name, value] of Object.entries(fields())) {
    const numeric = ["num_inference_steps", "guidance_scale", "seed", "n"].includes(name);
    body[name] = numeric ? Number(value) : value;
  }
  return {
    url: "v1/images/generations",
    init: { method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body) },
  };
}

function editRequest(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("response_format", "b64_json");
  for (const [name, value] of Object.entries(fields())) form.append(name, value);
  if ($("strength").value) form.append("strength", $("strength").value);
  return { url: "v1/images/edits", init: { method: "POST", headers: authHeaders(), body: form } };
}

function showImages(body, seconds) {
  const results = $("results");
  results.replaceChildren();
  for (const item of body.data) {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = "data:image/png;base64," + item.b64_json;
    image.alt = "seed " + item.seed;
    const caption = document.createElement("figcaption");
    caption.textContent = "seed " + item.seed + " · " + body.size + " · " + seconds.toFixed(2) + " s";
    figure.append(image, caption);
    results.append(figure);
  }
}

async function generate(event) {
  event.preventDefault();
  const file = $("image").files[0];
  const { url, init } = file ? editRequest(file) : generationRequest();
  const button = $("generate");
  button.disabled = true;
  clearError();
  setStatus(file ? "Editing…" : "Generating…");
  const started = performance.now();
  try {
    const response = await fetch(url, init);
    const body = await readBody(response);
    const seconds = (performance.now() - started) / 1000;
    if (!response.ok) {
      showError(response.status, body);
      setStatus("Refused (HTTP " + response.status + ")");
      return;
    }
    showImages(body, seconds);
    setStatus("Done: " + body.data.length + " image(s) in " + seconds.toFixed(2) + " s");
  } catch (error) {
    showError("no answer", String(error));
    setStatus("No answer from the service");
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
    loadOptions();
  });
  $("clear-image").addEventListener("click", () => {
    $("image").value = "";
  });
  $("form").addEventListener("submit", generate);
  loadOptions();
});
