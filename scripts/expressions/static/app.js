// The page: webcam frames to the server over a WebSocket (one in flight at a time, so it
// never lags), boxes and emotions drawn back over the video; photo and video uploads.
"use strict";
const EMOTIONS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"];
const EMOTION_COLOURS = ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f"];
const FRAME_INTERVAL_MS = 75;  // at most about 13 frames a second go to the server
const $ = (id) => document.getElementById(id);

// Valence -1..1 to a colour: red, yellow, green (the annotated videos' colours).
function valenceColour(v) {
  const t = Math.min(1, Math.max(0, (v + 1) / 2));
  return `rgb(${Math.round(255 * Math.min(1, 2 * (1 - t)))}, ${Math.round(255 * Math.min(1, 2 * t))}, 0)`;
}
const pct = (p) => `${Math.round(p * 100)}%`;

// ------------------------------------------------------------------ tabs and health
document.querySelectorAll("button.tab").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("button.tab, .panel").forEach((e) => e.classList.remove("active"));
  b.classList.add("active");
  $(b.dataset.tab).classList.add("active");
}));
fetch("/api/health").then((r) => r.json()).then((h) => {
  $("health").textContent = `model ${h.model} · detector ${h.detector} · ${h.runtime} · v${h.version}`;
}).catch(() => {});

// ------------------------------------------------------------------ drawing
function drawBoxes(ctx, faces, selectedId) {
  const scale = Math.max(1, ctx.canvas.width / 640);
  ctx.lineWidth = 2 * scale;
  ctx.font = `${Math.round(15 * scale)}px system-ui, sans-serif`;
  for (const f of faces) {
    const [x, y, w, h] = f.box;
    const colour = valenceColour(f.valence);
    ctx.strokeStyle = colour;
    ctx.lineWidth = (f.id === selectedId ? 4 : 2) * scale;
    ctx.strokeRect(x, y, w, h);
    const text = `${f.id !== undefined ? f.id + ": " : ""}${f.emotion} ${pct(f.probability)}`;
    const tw = ctx.measureText(text).width + 8, th = 20 * scale;
    const left = Math.max(0, Math.min(x, ctx.canvas.width - tw)), top = Math.max(0, y - th);
    ctx.fillStyle = colour;
    ctx.fillRect(left, top, tw, th);
    ctx.fillStyle = "#000";
    ctx.fillText(text, left + 4, top + th - 5 * scale);
  }
}

function showBars(face) {
  const bars = $("bars");
  bars.innerHTML = "";
  $("bars-title").textContent = face ? `Probabilities, face ${face.id}` : "Probabilities (no face)";
  if (!face) return;
  EMOTIONS.forEach((e) => {
    const p = face.probabilities[e];
    const row = document.createElement("div");
    row.className = "bar" + (e === face.emotion ? " top" : "");
    row.innerHTML = `<span>${e}</span><span class="track"><span class="fill" style="width:${p * 100}%"></span></span><span>${pct(p)}</span>`;
    bars.appendChild(row);
  });
}

function addSecondRows(tbody, seconds, newestFirst) {
  for (const s of seconds) {
    const rows = s.faces.length ? s.faces : [null];
    for (const f of rows) {
      const tr = document.createElement("tr");
      tr.innerHTML = f ? `<td>${s.time}</td><td>${f.id}</td><td>${f.emotion}</td><td>${pct(f.probability)}</td>` +
        `<td>${f.valence.toFixed(2)}</td><td>${f.arousal.toFixed(2)}</td>` : `<td>${s.time}</td><td colspan="5">no face</td>`;
      newestFirst ? tbody.prepend(tr) : tbody.appendChild(tr);
    }
  }
}

// One line per emotion: the per-second probability of one face over the last `window` seconds.
function drawChart(canvas, seconds, faceId, window) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 24;
  ctx.clearRect(0, 0, W, H);
  const shown = seconds.slice(-window);
  ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1;
  ctx.strokeRect(pad, 4, W - pad - 90, H - pad - 4);
  ctx.fillStyle = "#555"; ctx.font = "11px system-ui";
  ctx.fillText("100%", 0, 12); ctx.fillText("0", 10, H - pad);
  if (shown.length) ctx.fillText(`${shown[0].time} ... ${shown[shown.length - 1].time}` +
    (faceId !== null ? `, face ${faceId}` : ""), pad, H - 6);
  const x = (i) => pad + (shown.length > 1 ? i / (shown.length - 1) : 0.5) * (W - pad - 90);
  const y = (p) => 4 + (1 - p) * (H - pad - 8);
  EMOTIONS.forEach((e, k) => {
    ctx.strokeStyle = EMOTION_COLOURS[k]; ctx.lineWidth = 2; ctx.beginPath();
    let started = false;
    shown.forEach((s, i) => {
      const f = s.faces.find((g) => g.id === faceId);
      if (!f) { started = false; return; }
      started ? ctx.lineTo(x(i), y(f.probabilities[e])) : ctx.moveTo(x(i), y(f.probabilities[e]));
      started = true;
    });
    ctx.stroke();
    ctx.fillStyle = EMOTION_COLOURS[k];
    ctx.fillText(e, W - 80, 14 + k * 15);
  });
}

// ------------------------------------------------------------------ webcam
const live = { stream: null, socket: null, inFlight: false, timer: null, faces: [], selected: null,
               seconds: [], frames: 0, started: 0 };

function cameraMessage(text) {
  $("camera-message").textContent = text;
  $("camera-message").hidden = !text;
}

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    cameraMessage("This browser gives no camera access here (open the page as http://127.0.0.1 or localhost).");
    return;
  }
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    cameraMessage(err.name === "NotAllowedError" ? "Camera access was refused: allow it in the browser's address bar and press Start again."
      : err.name === "NotFoundError" ? "No camera found: connect one, or use the Photo and Video tabs."
      : `The camera could not be opened: ${err.message}`);
    return;
  }
  const video = $("camera");
  video.srcObject = live.stream;
  await video.play();
  cameraMessage("");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  live.socket = new WebSocket(`${scheme}://${location.host}/api/stream`);
  live.socket.binaryType = "arraybuffer";
  live.socket.onmessage = (event) => onResult(JSON.parse(event.data));
  live.socket.onclose = (event) => {
    if (live.stream) cameraMessage(event.code === 1013 ? "The server is reading as many webcams as it allows: try again in a moment."
                                                      : "The connection to the server closed: press Start again.");
    stopCamera();
  };
  live.socket.onopen = () => { live.started = performance.now(); live.timer = setInterval(sendFrame, FRAME_INTERVAL_MS); };
  $("start-camera").disabled = true;
  $("stop-camera").disabled = false;
}

function stopCamera() {
  clearInterval(live.timer);
  if (live.socket && live.socket.readyState <= 1) live.socket.close();
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  live.stream = null; live.socket = null; live.inFlight = false;
  $("start-camera").disabled = false;
  $("stop-camera").disabled = true;
}

const grab = document.createElement("canvas");
function sendFrame() {
  const video = $("camera");
  if (live.inFlight || !live.socket || live.socket.readyState !== 1 || !video.videoWidth) return;
  grab.width = video.videoWidth; grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  live.inFlight = true;
  grab.toBlob((blob) => blob.arrayBuffer().then((buffer) => live.socket && live.socket.send(buffer)), "image/jpeg", 0.8);
}

function onResult(result) {
  live.inFlight = false;
  if (result.error) { cameraMessage(result.error); return; }
  live.frames += 1;
  live.faces = result.faces;
  if (!live.faces.some((f) => f.id === live.selected)) live.selected = live.faces.length ? live.faces[0].id : null;
  const overlay = $("overlay");
  overlay.width = result.width; overlay.height = result.height;
  drawBoxes(overlay.getContext("2d"), live.faces, live.selected);
  showBars(live.faces.find((f) => f.id === live.selected));
  const seconds = (performance.now() - live.started) / 1000;
  $("camera-stats").textContent = `${live.frames} frames read, ${(live.frames / seconds).toFixed(1)} per second, ` +
    `${result.milliseconds.toFixed(0)} ms on the server`;
  if (result.seconds.length) {
    live.seconds.push(...result.seconds);
    addSecondRows($("live-seconds").tBodies[0], result.seconds, true);
    drawChart($("live-chart"), live.seconds, live.selected, 60);
  }
}

$("overlay").addEventListener("click", (event) => {
  const overlay = $("overlay"), r = overlay.getBoundingClientRect();
  const x = (event.clientX - r.left) * overlay.width / r.width, y = (event.clientY - r.top) * overlay.height / r.height;
  const hit = live.faces.find((f) => x >= f.box[0] && x <= f.box[0] + f.box[2] && y >= f.box[1] && y <= f.box[1] + f.box[3]);
  if (hit) { live.selected = hit.id; showBars(hit); drawChart($("live-chart"), live.seconds, live.selected, 60); }
});
$("start-camera").addEventListener("click", startCamera);
$("stop-camera").addEventListener("click", () => { stopCamera(); cameraMessage("Camera stopped."); });

// ------------------------------------------------------------------ photo
async function sendPhoto(file) {
  $("photo-message").textContent = "Reading the photo ...";
  const form = new FormData();
  form.append("image", file);
  const response = await fetch("/api/predict?annotate=true", { method: "POST", body: form });
  const result = await response.json();
  if (!response.ok) { $("photo-message").textContent = result.detail; return; }
  $("photo-message").textContent = result.faces.length ? `${result.faces.length} face(s)` : "No face found in this photo.";
  $("photo-result").src = result.annotated;
  const tbody = $("photo-faces").tBodies[0];
  tbody.innerHTML = "";
  result.faces.forEach((f, i) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${i + 1}</td><td>${f.box.join(", ")}</td><td>${f.emotion}</td><td>${pct(f.probability)}</td>` +
      `<td>${f.valence.toFixed(2)}</td><td>${f.arousal.toFixed(2)}</td>`;
    tbody.appendChild(tr);
  });
}
$("photo-file").addEventListener("change", (e) => e.target.files[0] && sendPhoto(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) sendPhoto(e.dataTransfer.files[0]);
});

// ------------------------------------------------------------------ video
function sendVideo(file) {
  const progress = $("video-progress"), message = $("video-message");
  progress.hidden = false; progress.value = 0;
  $("video-links").hidden = true; $("video-chart").hidden = true;
  $("video-seconds").tBodies[0].innerHTML = "";
  const form = new FormData();
  form.append("video", file);
  const xhr = new XMLHttpRequest();  // fetch() reports no upload progress
  xhr.open("POST", "/api/video");
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) { progress.value = e.loaded / e.total; message.textContent = `Uploading ... ${pct(e.loaded / e.total)}`; } };
  xhr.onload = () => {
    const result = JSON.parse(xhr.responseText);
    if (xhr.status !== 200) { message.textContent = result.detail; progress.hidden = true; return; }
    pollVideo(result.job);
  };
  xhr.onerror = () => { message.textContent = "The upload failed: is the server still running?"; };
  xhr.send(form);
}

async function pollVideo(job) {
  const progress = $("video-progress"), message = $("video-message");
  const result = await (await fetch(`/api/video/${job}`)).json();
  if (result.state === "error") { message.textContent = result.error; progress.hidden = true; return; }
  progress.value = result.progress;
  message.textContent = `Reading the video ... ${result.frames} of ${result.total_frames || "?"} frames`;
  if (result.state !== "done") { setTimeout(() => pollVideo(job), 300); return; }
  progress.hidden = true;
  message.textContent = `${result.frames} frames, ${result.seconds.length} seconds, ${result.fps.toFixed(0)} frames per second on the server.` + (result.note ? ` ${result.note}` : "");
  $("video-csv").href = `/api/video/${job}/timeline.csv`;
  $("video-annotated").href = `/api/video/${job}/annotated.mp4`;
  $("video-links").hidden = false;
  addSecondRows($("video-seconds").tBodies[0], result.seconds, false);
  const first = result.seconds.find((s) => s.faces.length);
  $("video-chart").hidden = false;
  drawChart($("video-chart"), result.seconds, first ? first.faces[0].id : null, result.seconds.length);
}
$("video-file").addEventListener("change", (e) => e.target.files[0] && sendVideo(e.target.files[0]));
