// VisionGuard demo page: the gateway's own API, called from the browser as any client would.
//
// Image: POST /v1/detect with the file as the body, then the boxes drawn over the picture.
// Video: frames sampled here (seek the <video>, draw it on a canvas, JPEG with toBlob), posted in
// order to POST /v1/streams/{id}/frames?frame=N&fps=F under a fresh stream id, then DELETE of
// that stream. Errors show the gateway's JSON error body ({"error": {"code", "message", ...}}).
//
// The page's state is on #status as data attributes (state, mode, frames done/total, tracks
// seen, detections, the video's stream id): what people see and the browser tests read.
"use strict";

const TRAIL_POINTS = 20;  // a track's trail: its last centres, one per frame
const EMPTY_CAPTION = "Nothing yet: choose an image or a video above.";

const el = (id) => document.getElementById(id);
const ui = {
  file: el("file"),
  conf: el("conf"),
  maxDet: el("max-det"),
  sampleFps: el("sample-fps"),
  maxFrames: el("max-frames"),
  status: el("status"),
  statusText: el("status-text"),
  progress: el("progress"),
  error: el("error"),
  errorTitle: el("error-title"),
  errorMessage: el("error-message"),
  errorDetails: el("error-details"),
  canvas: el("view"),
  caption: el("caption"),
  tableTitle: el("table-title"),
  tableHead: el("detections-head"),
  tableBody: el("detections-body"),
  timingsBody: el("timings-body"),
};

// ---------------------------------------------------------------------------------------------
// The gateway's API

class ApiError extends Error {
  constructor(status, statusText, body) {
    const error = (body && body.error) || {};
    super(error.message || statusText || `HTTP ${status}`);
    this.code = error.code || "";
    this.title = `The gateway answered ${status} ${error.code || statusText || ""}`.trim();
    const { code, message, ...details } = error;
    this.details = Object.keys(details).length ? JSON.stringify(details, null, 2) : "";
  }
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error(`the gateway did not answer (${err.message})`);
  }
  if (response.ok) {
    return response.status === 204 ? null : response.json();
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;  // not JSON (a proxy's page): the status line is all there is
  }
  throw new ApiError(response.status, response.statusText, body);
}

function queryParams(extra) {
  return new URLSearchParams({ conf: ui.conf.value, max_det: ui.maxDet.value, ...extra });
}

function detect(file) {
  return api(`/v1/detect?${queryParams({})}`, {
    method: "POST",
    body: file,
    headers: { "content-type": file.type || "application/octet-stream" },
  });
}

function trackFrame(streamId, frame, fps, jpeg) {
  const params = queryParams({ frame: String(frame), fps: String(fps) });
  return api(`/v1/streams/${encodeURIComponent(streamId)}/frames?${params}`, {
    method: "POST",
    body: jpeg,
    headers: { "content-type": "image/jpeg" },
  });
}

function newStreamId() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "demo-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------
// Page state, progress and errors

function setStatus(state, text, fields = {}) {
  ui.status.dataset.state = state;
  for (const [key, value] of Object.entries(fields)) {
    ui.status.dataset[key] = String(value);
  }
  ui.statusText.textContent = text;
}

function setProgress(done, total) {
  ui.progress.max = Math.max(total, 1);
  ui.progress.value = done;
}

function showError(err) {
  ui.errorTitle.textContent = err instanceof ApiError ? err.title : "Something went wrong";
  ui.errorMessage.textContent = err.message;
  ui.errorDetails.textContent = err.details || "";
  ui.errorDetails.hidden = !err.details;
  ui.error.hidden = false;
}

function setBusy(busy) {
  for (const input of [ui.file, ui.conf, ui.maxDet, ui.sampleFps, ui.maxFrames]) {
    input.disabled = busy;
  }
}

// ---------------------------------------------------------------------------------------------
// Drawing

function classColour(classId) {
  return `hsl(${(classId * 67) % 360} 90% 50%)`;
}

function trackColour(trackId) {
  return `hsl(${Math.round(trackId * 137.508) % 360} 85% 55%)`;
}

function drawLabel(ctx, text, x, y, colour, fontPx) {
  ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
  const pad = Math.round(fontPx * 0.25);
  const width = ctx.measureText(text).width + 2 * pad;
  const height = fontPx + 2 * pad;
  const top = y - height >= 0 ? y - height : y;  // above the box, or inside it at the top
  ctx.fillStyle = colour;
  ctx.fillRect(x, top, width, height);
  ctx.fillStyle = "#000";
  ctx.textBaseline = "top";
  ctx.fillText(text, x + pad, top + pad);
}

// Scale from the gateway's pixel grid (body.image) to what was drawn, and line sizes that read
// at the page's size whatever the image's size.
function drawingScale(source, image) {
  const sx = source.width / image.width;
  const sy = source.height / image.height;
  const lineWidth = Math.max(2, Math.round(source.width / 320));
  const fontPx = Math.max(12, Math.round(source.width / 45));
  return { sx, sy, lineWidth, fontPx };
}

function drawBox(ctx, box, scale, colour, dashed) {
  const [x1, y1, x2, y2] = box;
  ctx.lineWidth = scale.lineWidth;
  ctx.strokeStyle = colour;
  ctx.setLineDash(dashed ? [4 * scale.lineWidth, 3 * scale.lineWidth] : []);
  ctx.strokeRect(x1 * scale.sx, y1 * scale.sy, (x2 - x1) * scale.sx, (y2 - y1) * scale.sy);
  ctx.setLineDash([]);
}

function prepareCanvas(source) {
  ui.canvas.hidden = false;
  ui.canvas.width = source.width;
  ui.canvas.height = source.height;
  const ctx = ui.canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, source.width, source.height);
  return ctx;
}

function drawDetections(source, body) {
  const ctx = prepareCanvas(source);
  const scale = drawingScale(source, body.image);
  for (const d of body.detections) {
    const colour = classColour(d.class_id);
    drawBox(ctx, d.box, scale, colour, false);
    drawLabel(ctx, `${d.class_name} ${formatScore(d.score)}`, d.box[0] * scale.sx,
              d.box[1] * scale.sy, colour, scale.fontPx);
  }
}

function drawTracks(source, body, trails) {
  const ctx = prepareCanvas(source);
  const scale = drawingScale(source, body.image);
  for (const t of body.tracks) {
    const colour = trackColour(t.track_id);
    const trail = trails.get(t.track_id) || [];
    ctx.lineWidth = scale.lineWidth;
    ctx.lineJoin = "round";
    ctx.strokeStyle = colour;
    ctx.beginPath();
    trail.forEach(([x, y], i) => {
      if (i === 0) ctx.moveTo(x * scale.sx, y * scale.sy);
      else ctx.lineTo(x * scale.sx, y * scale.sy);
    });
    ctx.stroke();
    const [cx, cy] = trail[trail.length - 1] || [0, 0];  // where the track is now
    ctx.fillStyle = colour;
    ctx.beginPath();
    ctx.arc(cx * scale.sx, cy * scale.sy, 1.5 * scale.lineWidth, 0, 2 * Math.PI);
    ctx.fill();
    drawBox(ctx, t.box, scale, colour, t.state !== "confirmed");
    drawLabel(ctx, `#${t.track_id} ${t.class_name}`, t.box[0] * scale.sx, t.box[1] * scale.sy,
              colour, scale.fontPx);
  }
}

// ---------------------------------------------------------------------------------------------
// Tables

function formatScore(score) {
  return score.toPrecision(3);
}

function formatCoord(v) {
  return v.toFixed(1);
}

function fillTable(title, columns, rows) {
  ui.tableTitle.textContent = title;
  ui.tableHead.replaceChildren(...columns.map((name) => {
    const th = document.createElement("th");
    th.textContent = name;
    th.scope = "col";
    return th;
  }));
  ui.tableBody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

function fillTimings(timings) {
  ui.timingsBody.replaceChildren(...Object.entries(timings).map(([name, ms]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    const td = document.createElement("td");
    td.textContent = ms.toFixed(2);
    tr.append(th, td);
    return tr;
  }));
}

function clearResults() {
  ui.canvas.hidden = true;  // nothing of the previous upload stays on screen
  fillTable("Detections", [], []);
  fillTimings({});
  ui.caption.textContent = EMPTY_CAPTION;
  ui.error.hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Image

async function runImage(file) {
  setStatus("working", `Detecting objects in ${file.name}…`, { mode: "image" });
  setProgress(0, 1);
  const body = await detect(file);  // first: an image the gateway refuses shows its reason
  const bitmap = await createImageBitmap(file).catch(() => {
    throw new Error(`the gateway decoded ${file.name} but this browser cannot display it`);
  });
  drawDetections(bitmap, body);
  bitmap.close();
  fillTable(`Detections (${body.detections.length})`,
            ["#", "class", "score", "x1", "y1", "x2", "y2"],
            body.detections.map((d, i) => [String(i + 1), d.class_name, formatScore(d.score),
                                            ...d.box.map(formatCoord)]));
  fillTimings(body.timings_ms);
  ui.caption.textContent = `${body.image.width}×${body.image.height} px, model ` +
    `${body.model.name} version ${body.model.version}`;
  setProgress(1, 1);
  setStatus("done", `${body.detections.length} detections in ${file.name}.`,
            { detections: body.detections.length });
}

// ---------------------------------------------------------------------------------------------
// Video

function mediaErrorText(error) {
  const names = { 1: "aborted", 2: "network error", 3: "cannot decode", 4: "format not supported" };
  return error ? `${names[error.code] || "error"}${error.message ? ": " + error.message : ""}`
               : "unknown error";
}

function waitFor(target, event) {
  return new Promise((resolve, reject) => {
    const done = () => { cleanup(); resolve(); };
    const failed = () => { cleanup(); reject(new Error(mediaErrorText(target.error))); };
    const cleanup = () => {
      target.removeEventListener(event, done);
      target.removeEventListener("error", failed);
    };
    target.addEventListener(event, done);
    target.addEventListener("error", failed);
  });
}

async function openVideo(url, name) {
  const video = document.createElement("video");
  video.muted = true;
  video.preload = "auto";
  const loaded = waitFor(video, "loadeddata");
  video.src = url;
  try {
    await loaded;
  } catch (err) {
    throw new Error(`this browser cannot play ${name} (${err.message})`);
  }
  if (!Number.isFinite(video.duration)) {
    // Some recordings carry no duration: seeking past the end makes the browser find it.
    const found = waitFor(video, "seeked");
    video.currentTime = Number.MAX_SAFE_INTEGER;
    await found;
  }
  return video;
}

async function seek(video, t) {
  const seeked = waitFor(video, "seeked");
  video.currentTime = t;
  await seeked;
}

function toJpeg(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("JPEG encoding failed"))),
                  "image/jpeg", 0.9);
  });
}

function updateTrails(trails, tracks) {
  for (const t of tracks) {
    const [x1, y1, x2, y2] = t.box;
    const trail = trails.get(t.track_id) || [];
    trail.push([(x1 + x2) / 2, (y1 + y2) / 2]);
    trails.set(t.track_id, trail.slice(-TRAIL_POINTS));
  }
}

async function runVideo(file) {
  const fps = Number(ui.sampleFps.value);
  if (!(fps > 0)) throw new Error("frames/s sampled must be a positive number");
  setStatus("working", `Opening ${file.name}…`, { mode: "video" });
  const url = URL.createObjectURL(file);
  const streamId = newStreamId();
  const seen = new Set();
  let total = 0;
  let posted = false;
  let failure = null;
  try {
    const video = await openVideo(url, file.name);
    total = Math.max(1, Math.min(Number(ui.maxFrames.value) || 1,
                                 Math.floor(video.duration * fps)));
    const grab = document.createElement("canvas");
    grab.width = video.videoWidth;
    grab.height = video.videoHeight;
    const grabCtx = grab.getContext("2d");
    const trails = new Map();
    setStatus("working", `Tracking ${file.name}: frame 0 of ${total}`,
              { framesDone: 0, framesTotal: total, tracksSeen: 0, streamId });
    setProgress(0, total);
    for (let n = 0; n < total; n++) {
      // The middle of the n-th sampling interval: never on a frame boundary.
      const t = Math.min((n + 0.5) / fps, video.duration);
      await seek(video, t);
      grabCtx.drawImage(video, 0, 0, grab.width, grab.height);
      const jpeg = await toJpeg(grab);
      posted = true;
      const body = await trackFrame(streamId, n, fps, jpeg);
      updateTrails(trails, body.tracks);
      body.tracks.forEach((t) => seen.add(t.track_id));
      drawTracks(grab, body, trails);
      fillTable(`Tracks in frame ${n + 1} (${body.tracks.length})`,
                ["id", "class", "score", "state", "age", "x1", "y1", "x2", "y2"],
                body.tracks.map((t) => [String(t.track_id), t.class_name, formatScore(t.score),
                                        t.state, String(t.age), ...t.box.map(formatCoord)]));
      fillTimings(body.timings_ms);
      ui.caption.textContent = `Stream ${streamId}: frame ${n + 1} of ${total} at ` +
        `${t.toFixed(2)} s, ${seen.size} tracks so far`;
      setProgress(n + 1, total);
      setStatus("working", `Tracking ${file.name}: frame ${n + 1} of ${total}`,
                { framesDone: n + 1, tracksSeen: seen.size, detections: body.detections.length });
    }
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    URL.revokeObjectURL(url);
    if (posted) await forgetStream(streamId, failure);
  }
  setStatus("done", `${total} frames tracked: ${seen.size} tracks.`, {});  // stream deleted
}

// The stream's tracks are dropped at the end, whatever happened; a stream the gateway never
// created (its first frame refused) is not an error.
async function forgetStream(streamId, failure) {
  try {
    await api(`/v1/streams/${encodeURIComponent(streamId)}`, { method: "DELETE" });
  } catch (err) {
    if (err instanceof ApiError && err.code === "stream_not_found") return;
    if (!failure) throw err;
    failure.message += ` (and forgetting stream ${streamId} failed: ${err.message})`;
  }
}

// ---------------------------------------------------------------------------------------------

async function onUpload() {
  const file = ui.file.files[0];
  if (!file) return;
  clearResults();
  setBusy(true);
  setStatus("working", "", { framesDone: 0, framesTotal: 0, tracksSeen: 0, detections: 0,
                            streamId: "" });
  try {
    if (file.type.startsWith("video/")) {
      await runVideo(file);
    } else {
      await runImage(file);  // anything else: the gateway says what it accepts
    }
  } catch (err) {
    showError(err);
    if (ui.canvas.hidden) ui.caption.textContent = "No result: the reason is above.";
    setStatus("error", `${file.name}: failed.`, {});
  } finally {
    setBusy(false);
    ui.file.value = "";  // the same file can be chosen again
  }
}

ui.file.addEventListener("change", onUpload);
