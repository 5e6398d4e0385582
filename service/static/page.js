// The page at /: classify photos and feature vectors with the service, and show what it serves.
// Plain JavaScript with no dependencies; everything the service says is put in the page as text
// (textContent), never parsed as HTML.
"use strict";

// Real flowers from Fisher's Iris data (1936), to prefill the form, and the range of each
// measurement in it, shown as a hint. Used only when the served vector model is "iris"
// with these features; any other vector model gets empty fields.
const IRIS = {
  features: ["sepal_length", "sepal_width", "petal_length", "petal_width"],
  ranges: { sepal_length: [4.3, 7.9], sepal_width: [2.0, 4.4], petal_length: [1.0, 6.9], petal_width: [0.1, 2.5] },
  flowers: [
    { name: "Iris setosa, flower 1", values: [5.1, 3.5, 1.4, 0.2] },
    { name: "Iris versicolor, flower 51", values: [7.0, 3.2, 4.7, 1.4] },
    { name: "Iris virginica, flower 101", values: [6.3, 3.3, 6.0, 2.5] },
  ],
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const percent = (p) => `${(100 * p).toFixed(p >= 0.001 || p === 0 ? 1 : 2)}%`;

// ---------------------------------------------------------------------------------------------
// Talking to the service: every failure becomes a sentence a person can act on.

class ServiceError extends Error {
  constructor(status, detail) {
    super(explain(status, detail));
    this.status = status;
    this.detail = detail;
  }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  return detail === undefined ? "" : JSON.stringify(detail);
}

function explain(status, detail) {
  const said = detailText(detail);
  const why = {
    400: "The file could not be read as an image",
    401: "The service needs an API key for this (the page cannot send one)",
    404: "Not found",
    408: "The upload took too long",
    413: "Too large for the service",
    415: "Not a file type the service accepts",
    422: "The service cannot use this input",
    503: "The model is not ready yet (still loading, or busy); try again in a few seconds",
  }[status] || `The service answered ${status}`;
  return said ? `${why}: ${said}` : `${why}.`;
}

async function call(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } });
  } catch (error) {
    throw new ServiceError(0, `the service did not answer (${error.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ServiceError(response.status, body ? body.detail : response.statusText);
  return body;
}

// ---------------------------------------------------------------------------------------------
// Tabs, operated by mouse or keyboard (arrow keys, Home, End), as the ARIA pattern has it.

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const other of tabs) {
      const chosen = other === tab;
      other.setAttribute("aria-selected", String(chosen));
      other.tabIndex = chosen ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !chosen;
    }
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      const target = tabs[(next + tabs.length) % tabs.length];
      select(target);
      target.focus();
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Probability bars, most probable first.

function bars(probabilities) {
  const sorted = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  const list = el("ol", { class: "bars", "aria-label": "probability of each class, most probable first" });
  for (const [label, probability] of sorted) {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${100 * probability}%`; // CSSOM, which the CSP allows (style attributes it would not)
    list.append(
      el(
        "li",
        { "data-label": label, "data-probability": probability },
        el("span", { class: "name", text: label, title: label }),
        el("span", { class: "track", "aria-hidden": "true" }, bar),
        el("span", { class: "value", text: percent(probability) }),
      ),
    );
  }
  return list;
}

function verdict(prediction) {
  const p = prediction.probabilities[prediction.label];
  const answer = el(
    "p",
    { class: "verdict" },
    el("strong", { class: "label", text: prediction.label }),
    ` ${percent(p)}`,
  );
  // Models with an out-of-distribution score say when an input is probably none of their classes.
  if (prediction.abstain !== true) return answer;
  answer.append(
    el("span", {
      class: "abstain",
      role: "note",
      text: ` · probably none of these (out-of-distribution score ${prediction.ood_score.toFixed(2)})`,
    }),
  );
  return answer;
}

function meta(prediction, milliseconds) {
  return el("p", {
    class: "meta",
    text: `${prediction.model} version ${prediction.version} · ${Math.round(milliseconds)} ms round trip`,
  });
}

// ---------------------------------------------------------------------------------------------
// Image tab: each file is its own request (the service batches them together anyway), so one
// bad file shows its own error and the others still get their answers.

const shownUrls = [];

function classifyFiles(files) {
  const images = [...files];
  if (!images.length) return;
  const results = $("#results");
  shownUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
  results.replaceChildren();
  images.forEach((file) => {
    const card = el("article", { class: "result", "aria-busy": "true" });
    results.append(card);
    classifyFile(file, card);
  });
}

async function classifyFile(file, card) {
  const url = URL.createObjectURL(file);
  shownUrls.push(url);
  const original = el("img", { class: "original", src: url, alt: `your file ${file.name}` });
  const originalCaption = el("figcaption", { text: "Your photo" });
  original.addEventListener("load", () => {
    originalCaption.textContent = `Your photo, ${original.naturalWidth}×${original.naturalHeight}`;
    // Enlarged, a small photo shows its pixels, as the model's input beside it does.
    if (original.naturalWidth < original.width) original.classList.add("pixels");
  });
  original.addEventListener("error", () => {
    original.hidden = true;
    originalCaption.textContent = "Your file (the browser cannot show it)";
  });
  const seen = el("img", { class: "input pixels", alt: "" });
  const seenCaption = el("figcaption", { text: "What the model sees" });
  const status = el("p", { class: "meta", text: "Classifying…" });
  card.append(
    el("h3", { text: file.name || "pasted image" }),
    el("div", { class: "pictures" }, el("figure", {}, original, originalCaption), el("figure", {}, seen, seenCaption)),
    status,
  );
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const started = performance.now();
  try {
    const prediction = await call("/predict/image?preview=1", { method: "POST", body: form });
    if (prediction.input_png) {
      seen.src = `data:image/png;base64,${prediction.input_png}`;
      seen.alt = `the ${file.name} image as the model received it`;
      seen.addEventListener("load", () => {
        seenCaption.textContent = `What the model sees, ${seen.naturalWidth}×${seen.naturalHeight}`;
      });
    }
    card.dataset.label = prediction.label;
    const milliseconds = performance.now() - started;
    status.replaceWith(verdict(prediction), bars(prediction.probabilities), meta(prediction, milliseconds));
  } catch (error) {
    card.classList.add("failed");
    seen.closest("figure").hidden = true;
    card.dataset.status = error.status;
    status.replaceWith(el("p", { class: "error", role: "alert", text: error.message }));
  } finally {
    card.removeAttribute("aria-busy");
  }
}

async function classifySample(name) {
  try {
    const response = await fetch(`/static/samples/${encodeURIComponent(name)}`);
    if (!response.ok) throw new Error(`${response.status}`);
    const blob = await response.blob();
    classifyFiles([new File([blob], name, { type: blob.type })]);
  } catch (error) {
    $("#results").replaceChildren(el("p", { class: "error", role: "alert", text: `Cannot load the sample ${name}: ${error.message}` }));
  }
}

function setUpImageTab() {
  const input = $("#file");
  input.addEventListener("change", () => classifyFiles(input.files));
  for (const button of document.querySelectorAll("[data-sample]")) {
    button.addEventListener("click", () => classifySample(button.dataset.sample));
  }
  const drop = $("#drop");
  const over = (on) => (event) => {
    event.preventDefault();
    drop.classList.toggle("over", on);
  };
  drop.addEventListener("dragenter", over(true));
  drop.addEventListener("dragover", over(true));
  drop.addEventListener("dragleave", over(false));
  drop.addEventListener("drop", (event) => {
    over(false)(event);
    classifyFiles(event.dataTransfer.files);
  });
  // A file dropped beside the zone would make the browser navigate away to it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    if ($("#panel-image").hidden) return;
    const pasted = [...(event.clipboardData?.files || [])];
    if (pasted.length) {
      event.preventDefault();
      classifyFiles(pasted);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Feature tab: one number input per feature the model declares; the service's own validation
// messages are shown beside the field they are about.

let vectorModel = null;

function buildFeatureForm(model) {
  vectorModel = model;
  const names = model.input.feature_names || Array.from({ length: model.input.shape[1] }, (_, i) => `feature_${i}`);
  const unit = model.input.unit || "";
  const iris = model.name === "iris" && JSON.stringify(names) === JSON.stringify(IRIS.features);
  $("#tab-features").textContent = iris ? "Iris" : model.name;
  $("#features-intro").textContent = iris
    ? `Measurements of one iris flower${unit ? `, in ${unit}` : ""}; model ${model.name} version ${model.live_version}.`
    : `The ${names.length} features of model ${model.name} version ${model.live_version}.`;
  const fields = $("#features-fields");
  fields.replaceChildren();
  names.forEach((name, index) => {
    const id = `feature-${name}`;
    const range = iris ? IRIS.ranges[name] : null;
    const hint = range ? `${range[0]}–${range[1]} ${unit} in Fisher's data` : unit;
    fields.append(
      el(
        "div",
        { class: "field" },
        el("label", { for: id, text: `${name.replaceAll("_", " ")}${unit ? ` (${unit})` : ""}` }),
        el("input", {
          id,
          name,
          type: "number",
          step: "any",
          inputmode: "decimal",
          min: range ? 0 : null,
          "aria-describedby": `${id}-hint ${id}-error`,
          value: iris ? IRIS.flowers[0].values[index] : null,
        }),
        el("p", { class: "hint", id: `${id}-hint`, text: hint }),
        el("p", { class: "error", id: `${id}-error`, role: "alert" }),
      ),
    );
  });
  const flower = $("#flower");
  flower.hidden = $("#flower-label").hidden = !iris;
  if (iris) {
    flower.replaceChildren(...IRIS.flowers.map((f, i) => el("option", { value: i, text: f.name })));
    flower.onchange = () => {
      IRIS.flowers[flower.value].values.forEach((value, i) => {
        document.getElementById(`feature-${names[i]}`).value = value;
      });
    };
  }
}

function clearFeatureErrors() {
  for (const node of document.querySelectorAll("#features-form .error")) node.textContent = "";
  for (const node of document.querySelectorAll("#features-form input")) node.removeAttribute("aria-invalid");
}

function showFeatureError(error, names) {
  // A validation error is one line of "; "-separated parts, each about a field starting with
  // its name, e.g. "petal_width: Input should be a valid number; expected ...".
  let placed = false;
  const parts = typeof error.detail === "string" ? error.detail.split("; ") : [];
  for (const part of parts) {
    const name = names.find((candidate) => part.startsWith(`${candidate}: `));
    if (name === undefined) continue;
    const message = document.getElementById(`feature-${name}-error`);
    message.textContent = part;
    document.getElementById(`feature-${name}`).setAttribute("aria-invalid", "true");
    placed = true;
  }
  if (!placed) $("#features-error").textContent = error.message;
}

async function classifyFeatures(event) {
  event.preventDefault();
  clearFeatureErrors();
  const result = $("#features-result");
  if (!vectorModel) {
    $("#features-error").textContent = "No feature model is loaded yet.";
    return;
  }
  const names = [...document.querySelectorAll("#features-fields input")].map((input) => input.name);
  // Sent by name and as typed: what is not a number goes as null, for the service to judge.
  const body = {};
  for (const name of names) {
    const input = document.getElementById(`feature-${name}`);
    body[name] = input.value === "" || Number.isNaN(input.valueAsNumber) ? null : input.valueAsNumber;
  }
  const started = performance.now();
  try {
    const prediction = await call(`/predict/${encodeURIComponent(vectorModel.name)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    result.replaceChildren(
      el(
        "article",
        { class: "result", "data-label": prediction.label },
        verdict(prediction),
        bars(prediction.probabilities),
        meta(prediction, performance.now() - started),
      ),
    );
  } catch (error) {
    result.replaceChildren();
    showFeatureError(error, names);
  }
}

// ---------------------------------------------------------------------------------------------
// Models panel and readiness.

function formatValue(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(+value.toPrecision(4));
  if (Array.isArray(value)) return value.map(formatValue).join(", ");
  if (value === null) return "—";
  return String(value);
}

function flatten(object, prefix = "") {
  const rows = [];
  for (const [key, value] of Object.entries(object || {})) {
    const name = prefix ? `${prefix} ${key}` : key;
    if (value && typeof value === "object" && !Array.isArray(value)) rows.push(...flatten(value, name));
    else rows.push([name.replaceAll("_", " "), formatValue(value)]);
  }
  return rows;
}

function definitions(rows) {
  const list = el("dl");
  for (const [term, value] of rows) list.append(el("dt", { text: term }), el("dd", { text: value }));
  return list;
}

function cardLink(model) {
  if (!model.card) return null;
  const url = model.card; // where the service serves it
  const text = el("pre", { class: "card-text" });
  const details = el("details", {}, el("summary", { text: "Model card" }), el("p", {}, el("a", { href: url, text: "open MODEL_CARD.md" })), text);
  details.addEventListener("toggle", async () => {
    if (!details.open || text.textContent) return;
    try {
      const response = await fetch(url);
      text.textContent = response.ok ? await response.text() : explain(response.status, "");
    } catch (error) {
      text.textContent = `Cannot load the model card: ${error.message}`;
    }
  });
  return details;
}

function modelSection(model) {
  const rows = [
    ["status", model.status],
    ["kind", model.kind || "—"],
    ["live version", model.live_version || "none"],
    ["versions on disk", model.versions.join(", ") || "none"],
  ];
  if (model.pinned_version) rows.push(["pinned version", model.pinned_version]);
  for (const [version, why] of Object.entries(model.rejected_versions || {})) rows.push([`rejected version ${version}`, why]);
  if (model.device) rows.push(["device", model.device]);
  if (model.input) rows.push(["input", `${model.input.name} [${model.input.shape.map((d) => d ?? "batch").join(", ")}] ${model.input.dtype}`]);
  if (model.labels) rows.push(["labels", model.labels.join(", ")]);
  // What /models says of the live version's calibration; both null when it is uncalibrated.
  const calibration = [];
  if (model.temperature != null) calibration.push(["temperature", formatValue(model.temperature)]);
  if (model.validation_ece != null) calibration.push(["validation ECE", formatValue(model.validation_ece)]);
  return el(
    "article",
    { class: "model", "data-model": model.name },
    el("h3", { text: `${model.name}${model.ready ? "" : " (not serving)"}` }),
    definitions(rows),
    model.metrics ? el("h4", { text: "Metrics" }) : null,
    model.metrics ? definitions(flatten(model.metrics)) : null,
    calibration.length ? el("h4", { text: "Calibration" }) : null,
    calibration.length ? definitions(calibration) : null,
    cardLink(model),
  );
}

async function loadModels() {
  const panel = $("#models");
  try {
    const { models } = await call("/models");
    panel.replaceChildren(...models.map(modelSection));
    if (!models.length) panel.replaceChildren(el("p", { text: "No models are served." }));
    const vector = models.find((m) => m.kind === "vector" && m.ready);
    if (vector && (!vectorModel || vectorModel.live_version !== vector.live_version)) buildFeatureForm(vector);
    if (!vector && !vectorModel) $("#features-intro").textContent = "No feature model is served (yet).";
  } catch (error) {
    panel.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

let lastReady = null;

async function checkReadiness() {
  const badge = $("#readiness");
  let ready = false;
  try {
    const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
    const body = await response.json();
    ready = body.ready === true;
    // The service's own words: "not ready: cifar10: loading", "starting", "no models in ...".
    const detail = String(body.detail || response.status);
    badge.textContent = ready
      ? `Ready: ${Object.keys(body.models).join(", ")}`
      : detail.charAt(0).toUpperCase() + detail.slice(1);
  } catch (error) {
    badge.textContent = `The service does not answer (${error.message})`;
  }
  badge.dataset.ready = String(ready);
  if (ready !== lastReady) {
    lastReady = ready;
    loadModels();
  }
  setTimeout(checkReadiness, ready ? 15000 : 2000);
}

setUpTabs();
setUpImageTab();
$("#features-form").addEventListener("submit", classifyFeatures);
checkReadiness();
