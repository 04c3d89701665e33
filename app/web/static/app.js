"use strict";
// The try-it page: plain script, no build, no outside requests.

const $ = (id) => document.getElementById(id);
const state = { token: "", file: null, natural: null, crop: null, stored: null, square: null };

// Where the stored square came from, in words.
const SOURCES = {
  face: "The service put the square around the face it found.",
  content: "No face was found: the service chose the most detailed, colourful part.",
  centre: "The square is the centre of the picture.",
  client: "This is the square you chose.",
};

// Problem codes in words a person understands.
const MESSAGES = {
  not_authenticated: "You are not signed in, or your token has expired. Get a new token above.",
  image_too_large: "This file is too big.",
  unsupported_format: "This file is not a photo the service accepts. Use a JPEG, PNG, GIF or WebP image.",
  unsupported_content_type: "The upload was not sent as a file.",
  corrupt_image: "This image is damaged or incomplete and cannot be read. Try exporting it again.",
  too_many_pixels: "This image has too many pixels. Use a smaller photo.",
  dimensions_too_large: "This image is too wide or too tall. Use a smaller photo.",
  too_many_frames: "This animation has too many frames.",
  invalid_crop: "The crop square is outside the photo. Choose it again.",
  missing_file: "No file was sent. Choose a photo first.",
  rate_limited: "You have uploaded too often. Wait a moment and try again.",
  server_busy: "The service is busy. Try again in a few seconds.",
  storage_unavailable: "The image store is not reachable right now. Nothing was changed; try again later.",
  database_unavailable: "The service cannot save right now. Nothing was changed; try again later.",
};

const REMOVED = {
  "exif.gps": "GPS position removed",
  "exif.camera": "Camera make, model and serial removed",
  "exif.datetime": "Date and time the photo was taken removed",
  "exif.software": "Editing software removed",
  "exif.thumbnail": "Embedded preview image removed",
  "exif": "EXIF data removed",
  "xmp": "XMP metadata removed",
  "iptc": "IPTC data (captions, credits) removed",
  "comment": "Comment removed",
  "icc->srgb": "Colour profile converted to standard sRGB",
  "icc": "Colour profile removed",
};

function explain(problem, status) {
  if (problem && MESSAGES[problem.code]) return MESSAGES[problem.code];
  if (problem && problem.detail) return problem.detail;
  return `The upload failed (HTTP ${status}).`;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function getToken(event) {
  event.preventDefault();
  const userId = $("user-id").value.trim();
  const response = await fetch("/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user_id: userId }),
  });
  const body = await response.json();
  if (!response.ok) {
    $("token-status").textContent = explain(body, response.status);
    return;
  }
  state.token = body.token;
  $("token-status").textContent = `Signed in as ${userId} with a development token.`;
  updateButton();
}

async function showLimits() {
  try {
    const response = await fetch("/avatar/constraints");
    if (!response.ok) return;
    const c = await response.json();
    const mb = (c.max_upload_bytes / 1048576).toFixed(0);
    $("limits").textContent =
      `Up to ${mb} MB, ${c.max_dimension} px a side, ${Math.round(c.max_pixels / 1e6)} megapixels.`;
  } catch (_) { /* the page works without it */ }
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  showError("");
  const image = $("crop-image");
  image.onload = () => {
    state.natural = { width: image.naturalWidth, height: image.naturalHeight };
    resetCrop();
    $("crop-area").hidden = false;
    updateButton();
  };
  image.onerror = () => {
    // Not something the browser can show (or not an image at all): upload it as it is and
    // let the service say what it thinks.
    state.natural = null;
    $("crop-area").hidden = true;
    updateButton();
  };
  if (image.src) URL.revokeObjectURL(image.src);
  image.src = URL.createObjectURL(file);
}

function resetCrop() {
  const { width, height } = state.natural;
  const side = Math.min(width, height);
  state.crop = { x: Math.floor((width - side) / 2), y: Math.floor((height - side) / 2), size: side };
  const size = $("crop-size");
  size.min = String(Math.min(16, side));
  size.max = String(side);
  size.value = String(side);
  drawCrop();
}

// A square ({x, y, size} in pixels) kept inside an image of `width` x `height`, shown on its
// sliders (ids.size, ids.x, ids.y; each with an "-out" text) and as the box (ids.box) drawn
// over the image. The crop before an upload and the stored square after it both use it.
function drawSquareOn(square, { width, height }, ids) {
  square.size = Math.max(1, Math.min(square.size, width, height));
  square.x = Math.max(0, Math.min(square.x, width - square.size));
  square.y = Math.max(0, Math.min(square.y, height - square.size));
  $(ids.x).max = String(width - square.size);
  $(ids.y).max = String(height - square.size);
  for (const key of ["x", "y", "size"]) {
    $(ids[key]).value = String(square[key]);
    $(`${ids[key]}-out`).textContent = `${square[key]} px`;
  }
  const box = $(ids.box);
  box.style.left = `${(100 * square.x) / width}%`;
  box.style.top = `${(100 * square.y) / height}%`;
  box.style.width = `${(100 * square.size) / width}%`;
  box.style.height = `${(100 * square.size) / height}%`;
}

const CROP_IDS = { size: "crop-size", x: "crop-x", y: "crop-y", box: "crop-box" };
const SQUARE_IDS = { size: "square-zoom", x: "square-across", y: "square-down", box: "square-box" };

function drawCrop() {
  if (!state.natural) return;
  drawSquareOn(state.crop, state.natural, CROP_IDS);
  const enabled = $("crop-enabled").checked;
  for (const id of [CROP_IDS.size, CROP_IDS.x, CROP_IDS.y]) $(id).disabled = !enabled;
  $(CROP_IDS.box).hidden = !enabled;
}

function updateButton() {
  $("upload-button").disabled = !(state.token && state.file);
}

function cropParam() {
  if (!state.natural || !$("crop-enabled").checked) return "";
  const c = state.crop;
  return `${c.x},${c.y},${c.size},${c.size}`;
}

function upload() {
  showError("");
  const crop = cropParam();
  const url = "/users/me/avatar" + (crop ? `?crop=${encodeURIComponent(crop)}` : "");
  const form = new FormData();
  form.append("file", state.file, state.file.name || "photo");
  const request = new XMLHttpRequest();
  request.open("POST", url);
  request.setRequestHeader("Authorization", `Bearer ${state.token}`);
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) $("progress").value = (100 * event.loaded) / event.total;
  };
  request.onload = () => {
    $("progress").value = 100;
    let body = null;
    try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
    if (request.status === 201 && body) {
      $("upload-status").textContent = "Uploaded.";
      render(body, crop);
    } else {
      $("upload-status").textContent = "";
      showError(explain(body, request.status));
    }
    $("upload-button").disabled = false;
  };
  request.onerror = () => {
    showError("The service could not be reached. Check your connection and try again.");
    $("upload-button").disabled = false;
  };
  $("upload-button").disabled = true;
  $("upload-status").textContent = "Uploading…";
  $("progress").value = 0;
  request.send(form);
}

function render(doc, crop) {
  $("result").hidden = false;
  const removed = $("removed-report");
  removed.replaceChildren();
  const items = (doc.metadata_removed || []).map((key) => REMOVED[key] || `${key} removed`);
  if (doc.orientation_applied && doc.orientation_applied !== 1) {
    items.push(`Turned upright (EXIF orientation ${doc.orientation_applied})`);
  }
  if (!items.length) items.push("Nothing private was found in this photo.");
  for (const text of items) {
    const li = document.createElement("li");
    li.textContent = text;
    removed.append(li);
  }

  const placeholder = doc.placeholder || {};
  $("placeholder-swatch").style.background = placeholder.dominant_color || "transparent";
  $("placeholder-text").textContent = placeholder.blurhash
    ? `${placeholder.blurhash}  ${placeholder.dominant_color || ""}` : "(none)";
  if (placeholder.blurhash) drawBlurhash($("placeholder-canvas"), placeholder.blurhash);

  const original = (doc.variants || []).find((v) => v.name === "original");
  $("original-image").src = doc.avatar_url;
  if (original) {
    $("original-image").width = original.width;
    $("original-image").height = original.height;
    $("original-caption").textContent =
      `${original.width}×${original.height}, ${original.bytes.toLocaleString()} bytes, ${original.content_type}`;
  }
  const list = $("variants");
  list.replaceChildren();
  for (const variant of doc.variants || []) {
    if (variant.name === "original") continue;
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = variant.url;
    img.alt = `The ${variant.name} size, ${variant.width} by ${variant.height} pixels`;
    img.width = variant.width;
    img.height = variant.height;
    img.dataset.variant = variant.name;
    const caption = document.createElement("figcaption");
    caption.textContent = `${variant.name}: ${variant.width}×${variant.height}, ${variant.bytes.toLocaleString()} bytes`;
    figure.append(img, caption);
    list.append(figure);
  }
  showPicture(doc);
  showSquare(doc, original);
  const origin = window.location.origin;
  const query = crop ? `?crop=${crop}` : "";
  $("curl-command").textContent =
    `curl -H "Authorization: Bearer ${state.token}" \\\n  -F file=@${state.file.name || "photo.jpg"} \\\n  "${origin}/users/me/avatar${query}"`;
  $("json-document").textContent = JSON.stringify(doc, null, 2);
}

// The document's <picture> sources, as a page would write them; the caption says what was picked.
function showPicture(doc) {
  const sources = doc.sources || [];
  const fallback = sources.find((s) => s.type === "image/jpeg");
  const picture = document.createElement("picture");
  for (const source of sources) {
    if (source === fallback) continue;
    const element = document.createElement("source");
    element.type = source.type;
    element.srcset = source.srcset;
    element.sizes = "96px";
    if (source.media) element.media = source.media;
    picture.append(element);
  }
  const img = document.createElement("img");
  img.id = "picture-image";
  img.alt = "Your avatar, in the format your browser picked";
  img.width = 96;
  img.height = 96;
  img.sizes = "96px";
  if (fallback) img.srcset = fallback.srcset;
  img.addEventListener("load", () => {
    const name = img.currentSrc.split("/").pop();
    $("picture-caption").textContent = `Your browser picked ${name}`;
    img.dataset.picked = name;
  });
  picture.append(img);
  $("picture-frame").replaceChildren(picture);
  $("picture-markup").textContent = picture.outerHTML.replaceAll("><", ">\n<");
}

// The square the squares were cut from, over the stored original: move it and save it (PATCH).
function showSquare(doc, original) {
  if (!original || !doc.crop) return;
  state.stored = { width: original.width, height: original.height };
  const [x, y, width, height] = doc.crop;
  state.square = { x, y, size: Math.min(width, height) };
  $("square-source").textContent = SOURCES[doc.crop_source] || "";
  $("square-source").dataset.source = doc.crop_source || "";
  $("square-image").src = doc.avatar_url;
  const zoom = $("square-zoom");
  zoom.min = String(Math.min(16, original.width, original.height));
  zoom.max = String(Math.min(original.width, original.height));
  $("square-save").disabled = true;
  drawSquare();
}

function drawSquare() {
  drawSquareOn(state.square, state.stored, SQUARE_IDS);
}

function moveSquare(key, value) {
  state.square[key] = value;
  $("square-save").disabled = false;
  drawSquare();
}

async function saveSquare() {
  const s = state.square;
  $("square-save").disabled = true;
  $("square-status").textContent = "Saving…";
  const response = await fetch("/users/me/avatar", {
    method: "PATCH",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.token}` },
    body: JSON.stringify({ crop: [s.x, s.y, s.size, s.size] }),
  });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    $("square-status").textContent = "";
    showError(explain(body, response.status));
    $("square-save").disabled = false;
    return;
  }
  $("square-status").textContent = "Saved: every size was cut again from this square.";
  render(body, cropParam());
}

// BlurHash decoding (the algorithm published with BlurHash), drawn into a small canvas.
const B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
function decode83(text) {
  let value = 0;
  for (const ch of text) value = value * 83 + B83.indexOf(ch);
  return value;
}
function srgbToLinear(v) {
  const x = v / 255;
  return x <= 0.04045 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4);
}
function linearToSrgb(v) {
  const x = Math.max(0, Math.min(1, v));
  return Math.round((x <= 0.0031308 ? x * 12.92 : 1.055 * Math.pow(x, 1 / 2.4) - 0.055) * 255);
}
function signPow(v, e) { return Math.sign(v) * Math.pow(Math.abs(v), e); }
function drawBlurhash(canvas, hash) {
  const sizeFlag = decode83(hash[0]);
  const nx = (sizeFlag % 9) + 1;
  const ny = Math.floor(sizeFlag / 9) + 1;
  const maxAc = (decode83(hash[1]) + 1) / 166;
  const colors = [];
  const dc = decode83(hash.slice(2, 6));
  colors.push([srgbToLinear(dc >> 16), srgbToLinear((dc >> 8) & 255), srgbToLinear(dc & 255)]);
  for (let i = 1; i < nx * ny; i++) {
    const v = decode83(hash.slice(4 + i * 2, 6 + i * 2));
    colors.push([
      signPow((Math.floor(v / 361) - 9) / 9, 2) * maxAc,
      signPow(((Math.floor(v / 19) % 19) - 9) / 9, 2) * maxAc,
      signPow(((v % 19) - 9) / 9, 2) * maxAc,
    ]);
  }
  const { width, height } = canvas;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let j = 0; j < ny; j++) {
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / width) * Math.cos((Math.PI * y * j) / height);
          const c = colors[i + j * nx];
          r += c[0] * basis; g += c[1] * basis; b += c[2] * basis;
        }
      }
      const o = 4 * (x + y * width);
      pixels.data[o] = linearToSrgb(r);
      pixels.data[o + 1] = linearToSrgb(g);
      pixels.data[o + 2] = linearToSrgb(b);
      pixels.data[o + 3] = 255;
    }
  }
  context.putImageData(pixels, 0, 0);
}

function wire() {
  $("token-form").addEventListener("submit", getToken);
  $("file-input").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    chooseFile(event.dataTransfer.files[0]);
  });
  $("crop-enabled").addEventListener("change", drawCrop);
  $("crop-size").addEventListener("input", (e) => { state.crop.size = Number(e.target.value); drawCrop(); });
  $("crop-x").addEventListener("input", (e) => { state.crop.x = Number(e.target.value); drawCrop(); });
  $("crop-y").addEventListener("input", (e) => { state.crop.y = Number(e.target.value); drawCrop(); });
  $("upload-button").addEventListener("click", upload);
  $("square-zoom").addEventListener("input", (e) => moveSquare("size", Number(e.target.value)));
  $("square-across").addEventListener("input", (e) => moveSquare("x", Number(e.target.value)));
  $("square-down").addEventListener("input", (e) => moveSquare("y", Number(e.target.value)));
  $("square-save").addEventListener("click", saveSquare);
  showLimits();
}

wire();
