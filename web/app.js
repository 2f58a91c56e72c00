// streamscribe's page: start a job (POST /jobs), follow /jobs/{id}/events with EventSource
// (which reconnects by itself and resumes with Last-Event-ID), and render segments in reading
// order while they finish out of order. No build step, no dependencies.

const $ = (id) => document.getElementById(id);

const TOKEN_KEY = "streamscribe.token";
const TOKEN_COOKIE = "streamscribe_token";

const els = {
  form: $("source-form"),
  url: $("url"),
  file: $("file"),
  submit: $("submit"),
  formError: $("form-error"),
  tokenField: $("token-field"),
  token: $("token"),
  job: $("job"),
  title: $("job-title"),
  duration: $("job-duration"),
  status: $("job-status"),
  progress: $("progress"),
  progressText: $("progress-text"),
  cancel: $("cancel"),
  copy: $("copy"),
  jobError: $("job-error"),
  segments: $("segments"),
  live: $("live"),
  downloads: ["txt", "srt", "vtt", "json"].map((fmt) => [fmt, $(`dl-${fmt}`)]),
};

/** State of the job on screen; rebuilt from events, so replays after a reconnect are harmless. */
let job = null;

function newJob(id) {
  return {
    id,
    meta: null,
    segments: new Map(), // index -> {start, end, text, silent} or {failed, message, start, end}
    total: 0,
    committed: 0,
    announced: 0,
    finished: false,
    source: null,
  };
}

// -- small helpers ---------------------------------------------------------------------------

function clock(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

function aboutSeconds(eta) {
  if (eta == null || !isFinite(eta)) return "";
  if (eta < 1.5) return "almost done";
  if (eta < 90) return `about ${Math.round(eta)} s left`;
  return `about ${Math.round(eta / 60)} min left`;
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

/** Keep the token in a cookie too: EventSource and download links cannot send a header, and a
 * token in their URLs would end up in access logs. The server takes the cookie on GET only. */
function saveToken(t) {
  localStorage.setItem(TOKEN_KEY, t);
  rememberTokenCookie(t);
}

function rememberTokenCookie(t) {
  document.cookie = `${TOKEN_COOKIE}=${encodeURIComponent(t)}; path=/; SameSite=Strict`;
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/** The server's JSON {"detail": ...} as one sentence for people. */
async function problem(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || String(d)).join("; ");
  } catch {
    detail = "";
  }
  if (response.status === 429) {
    const wait = response.headers.get("Retry-After");
    return (detail || "The server is busy.") + (wait && !detail ? ` Try again in ${wait} s.` : "");
  }
  return detail || `The server answered ${response.status} ${response.statusText}.`;
}

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

function setStatus(text, kind = "") {
  els.status.textContent = text;
  els.status.className = `status ${kind}`;
}

// -- starting a job ----------------------------------------------------------------------------

els.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(els.formError, "");
  if (!els.tokenField.hidden && els.token.value.trim()) {
    saveToken(els.token.value.trim());
  }
  const url = els.url.value.trim();
  const file = els.file.files[0];
  const mode = new FormData(els.form).get("mode") || "parallel";
  if (!url && !file) {
    showError(els.formError, "Paste a link or choose a file first.");
    els.url.focus();
    return;
  }
  if (url && file) {
    showError(els.formError, "Give either a link or a file, not both.");
    return;
  }
  let body;
  const headers = { ...authHeaders() };
  if (file) {
    body = new FormData();
    body.append("mode", mode);
    body.append("file", file, file.name);
  } else {
    body = JSON.stringify({ url, mode });
    headers["Content-Type"] = "application/json";
  }
  els.submit.disabled = true;
  els.submit.textContent = file ? "Uploading…" : "Starting…";
  try {
    const response = await fetch("/jobs", { method: "POST", body, headers });
    if (response.status === 401) {
      els.tokenField.hidden = false;
      els.token.focus();
      showError(els.formError, "This server needs an access token: enter it above and submit again.");
      return;
    }
    if (!response.ok) {
      showError(els.formError, await problem(response));
      return;
    }
    const created = await response.json();
    history.replaceState(null, "", `#job=${created.id}`);
    follow(created.id, created.events_url);
  } catch (err) {
    showError(els.formError, "Could not reach the server. Check your connection and try again.");
  } finally {
    els.submit.disabled = false;
    els.submit.textContent = "Transcribe";
  }
});

// -- following a job ---------------------------------------------------------------------------

let source = null;

function follow(id, eventsUrl) {
  if (source) source.close();
  job = newJob(id);
  els.segments.replaceChildren();
  els.live.textContent = "";
  showError(els.jobError, "");
  els.jobError.classList.remove("note");
  els.job.hidden = false;
  els.title.textContent = "Starting…";
  els.duration.textContent = "";
  setStatus("connecting", "busy");
  setProgress(0, "");
  els.cancel.disabled = false;
  for (const [fmt, a] of els.downloads) a.href = `/jobs/${id}/transcript.${fmt}`;

  const es = new EventSource(eventsUrl || `/jobs/${id}/events`);
  source = es;
  job.source = es;
  const on = (type, handler) =>
    es.addEventListener(type, (e) => {
      // A connection problem also fires "error", without data: es.onerror handles those.
      if (e.data !== undefined && job && job.source === es) handler(JSON.parse(e.data));
    });
  on("meta", onMeta);
  on("segment", onSegment);
  on("segment_error", onSegmentError);
  on("progress", onProgress);
  on("done", onDone);
  on("error", onFatal);
  es.onopen = () => {
    if (!job.finished) setStatus(job.meta ? "transcribing" : "opening the source", "busy");
  };
  es.onerror = () => {
    if (job.finished) return;
    if (es.readyState === EventSource.CLOSED) {
      setStatus("disconnected", "bad");
      explainClosed(id);
    } else {
      setStatus("reconnecting…", "busy");
    }
  };
}

/** The browser gave up on the stream (an HTTP error): ask the job itself what is wrong. */
async function explainClosed(id) {
  let message = "Lost the connection to this job. Reload the page to try again.";
  try {
    const response = await fetch(`/jobs/${id}`, { headers: authHeaders() });
    if (!response.ok) message = await problem(response);
  } catch {
    // keep the generic message
  }
  showError(els.jobError, message);
}

function onMeta(meta) {
  job.meta = meta;
  els.title.textContent = meta.title || "Untitled";
  els.duration.textContent = meta.duration ? clock(meta.duration) : "";
  document.title = `${meta.title} — streamscribe`;
  setStatus("transcribing", "busy");
}

function onSegment(seg) {
  job.segments.set(seg.index, seg);
  job.total = Math.max(job.total, seg.index + 1);
  render();
}

function onSegmentError(seg) {
  job.segments.set(seg.index, { ...seg, failed: true });
  job.total = Math.max(job.total, seg.index + 1);
  render();
}

function onProgress(p) {
  job.total = Math.max(job.total, p.segments_total);
  job.committed = p.committed;
  const duration = p.duration || (job.meta && job.meta.duration);
  let fraction;
  if (p.decoding_done && p.segments_total) fraction = p.segments_done / p.segments_total;
  else if (duration) fraction = Math.min(1, p.audio_done / duration);
  else fraction = p.segments_total ? p.segments_done / p.segments_total : 0;
  job.decodingDone = p.decoding_done;
  const parts = [
    p.decoding_done
      ? `${p.segments_done} of ${p.segments_total} parts`
      : `${p.segments_done} ${p.segments_done === 1 ? "part" : "parts"} done, more on the way`,
  ];
  if (duration) parts.push(`${clock(p.audio_done)} of ${clock(duration)}`);
  const eta = aboutSeconds(p.eta);
  if (eta) parts.push(eta);
  setProgress(fraction, parts.join(" · "));
  render();
}

function onDone(done) {
  finish("done", "good");
  const rtf = done.rtf ? ` (${(1 / done.rtf).toFixed(1)}× real time)` : "";
  setProgress(1, `Finished in ${done.wall_s.toFixed(1)} s${rtf}.`);
  job.total = Math.max(job.total, done.segments);
  render();
  if (done.failed_segments && done.failed_segments.length) {
    showError(els.jobError, `${done.failed_segments.length} part(s) could not be transcribed.`);
  }
}

function onFatal(err) {
  const cancelled = err.code === "cancelled";
  finish(cancelled ? "cancelled" : "failed", "bad");
  showError(els.jobError, err.message || "The transcription failed.");
  els.jobError.classList.toggle("note", cancelled);
  const kept = [...job.segments.values()].filter((s) => !s.failed).length;
  els.progressText.textContent = kept
    ? `Stopped. The ${kept} part(s) already transcribed are kept below.`
    : "Stopped before any part was transcribed.";
  render();
}

function finish(status, kind) {
  job.finished = true;
  if (job.source) job.source.close();
  setStatus(status, kind);
  els.cancel.disabled = true;
}

function setProgress(fraction, text) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  // Full means finished: no easing into it, or a look (or a screenshot) right at the end
  // finds the bar short of full while it slides.
  els.progress.classList.toggle("complete", pct === 100);
  els.progress.querySelector(".bar").style.width = `${pct}%`;
  els.progress.setAttribute("aria-valuenow", String(pct));
  els.progressText.textContent = text;
}

// -- rendering ---------------------------------------------------------------------------------

/** Where a pending segment sits: between its neighbours' ends and starts, when they are known. */
function pendingRange(index) {
  const before = job.segments.get(index - 1);
  const after = job.segments.get(index + 1);
  return [before ? before.end : index === 0 ? 0 : null, after ? after.start : null];
}

function timeLink(seconds) {
  const meta = job.meta;
  const label = clock(seconds);
  if (meta && meta.is_youtube && meta.webpage_url) {
    const a = document.createElement("a");
    const sep = meta.webpage_url.includes("?") ? "&" : "?";
    a.href = `${meta.webpage_url}${sep}t=${Math.floor(seconds)}s`;
    a.target = "_blank";
    a.rel = "noopener";
    a.textContent = label;
    a.title = `Open the video at ${label}`;
    return a;
  }
  const span = document.createElement("span");
  span.textContent = label;
  return span;
}

function render() {
  const list = els.segments;
  const rows = () => list.querySelectorAll("li[data-index]");
  while (rows().length < job.total) {
    const li = document.createElement("li");
    li.dataset.index = String(rows().length);
    list.insertBefore(li, document.getElementById("tail"));
  }
  for (const li of rows()) {
    const index = Number(li.dataset.index);
    const seg = job.segments.get(index);
    const state = seg ? (seg.failed ? "failed" : seg.silent || !seg.text.trim() ? "silent" : "done") : "pending";
    if (li.dataset.state === state && state !== "pending") continue;
    li.dataset.state = state;
    li.className = `segment ${state}`;
    const time = document.createElement("span");
    time.className = "time";
    const text = document.createElement("span");
    text.className = "text";
    if (seg) {
      time.append(timeLink(seg.start), "–", clock(seg.end));
    } else {
      const [start, end] = pendingRange(index);
      time.textContent = start == null ? "…" : `${clock(start)}–${end == null ? "…" : clock(end)}`;
    }
    if (state === "done") text.textContent = seg.text.trim();
    else if (state === "silent") text.textContent = "(silence)";
    else if (state === "failed") text.textContent = "(this part could not be transcribed)";
    else {
      text.textContent = job.finished ? "(not transcribed)" : "transcribing…";
      li.setAttribute("aria-busy", job.finished ? "false" : "true");
    }
    if (state !== "pending") li.removeAttribute("aria-busy");
    li.replaceChildren(time, text);
  }
  renderTail();
  announce();
}

/** While audio is still arriving, one row stands for the part not cut into segments yet. */
function renderTail() {
  let tail = document.getElementById("tail");
  const duration = job.meta && job.meta.duration;
  const cutUpTo = Math.max(0, ...[...job.segments.values()].map((s) => s.end));
  if (job.finished || job.decodingDone || !duration || cutUpTo >= duration - 0.5) {
    if (tail) tail.remove();
    return;
  }
  if (!tail) {
    tail = document.createElement("li");
    tail.id = "tail";
    tail.className = "segment pending tail";
    tail.setAttribute("aria-hidden", "true");
  }
  const from = job.total > job.segments.size ? "…" : clock(cutUpTo);
  tail.replaceChildren(
    Object.assign(document.createElement("span"), { className: "time", textContent: `${from}–${clock(duration)}` }),
    Object.assign(document.createElement("span"), { className: "text", textContent: "audio still arriving…" }),
  );
  els.segments.append(tail);
}

/** Read new text aloud once it can be read in order (the committed prefix). */
function announce() {
  let n = job.announced;
  const fresh = [];
  while (job.segments.has(n)) {
    const seg = job.segments.get(n);
    if (!seg.failed && seg.text && seg.text.trim()) fresh.push(seg.text.trim());
    n += 1;
  }
  if (n === job.announced) return;
  job.announced = n;
  if (fresh.length) {
    const p = document.createElement("p");
    p.textContent = fresh.join(" ");
    els.live.append(p);
    while (els.live.children.length > 5) els.live.firstChild.remove();
  }
}

function transcriptText() {
  const out = [];
  for (const index of [...job.segments.keys()].sort((a, b) => a - b)) {
    const seg = job.segments.get(index);
    if (!seg.failed && seg.text && seg.text.trim()) out.push(seg.text.trim());
  }
  return out.join("\n");
}

// -- toolbar -----------------------------------------------------------------------------------

els.cancel.addEventListener("click", async () => {
  if (!job || job.finished) return;
  els.cancel.disabled = true;
  try {
    const response = await fetch(`/jobs/${job.id}`, { method: "DELETE", headers: authHeaders() });
    if (!response.ok) showError(els.jobError, await problem(response));
  } catch {
    showError(els.jobError, "Could not reach the server to cancel.");
    els.cancel.disabled = false;
  }
});

els.copy.addEventListener("click", async () => {
  if (!job) return;
  const text = transcriptText();
  try {
    await navigator.clipboard.writeText(text);
    flash(els.copy, "Copied");
  } catch {
    // Clipboard API unavailable (plain http on another host): select the text instead.
    const range = document.createRange();
    range.selectNodeContents(els.segments);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    flash(els.copy, "Selected — press Ctrl+C");
  }
});

function flash(button, text) {
  const before = button.textContent;
  button.textContent = text;
  setTimeout(() => (button.textContent = before), 1500);
}

els.url.addEventListener("input", () => {
  if (els.url.value) els.file.value = "";
});
els.file.addEventListener("change", () => {
  if (els.file.files.length) els.url.value = "";
});

// The cookie first: a reload's EventSource below needs it.
if (token()) {
  els.token.value = token();
  rememberTokenCookie(token());
}
// A reload (or a shared link) with #job=ID follows that job again, replayed from the start.
const match = location.hash.match(/^#job=([0-9a-f]{8,64})$/);
if (match) follow(match[1]);
