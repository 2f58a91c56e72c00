// streamscribe's page: start a job (POST /jobs), follow /jobs/{id}/events with EventSource
// (which reconnects by itself and resumes with Last-Event-ID), and render segments in reading
// order while they finish out of order. No build step, no dependencies.

import { hidePlaylist, showPlaylist } from "./playlist.js";

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
  player: $("player"),
  media: $("media"),
  yt: $("yt-player"),
  playerNote: $("player-note"),
  search: $("search"),
  searchCount: $("search-count"),
  follow: $("follow"),
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
    query: "",
    // Keep the playing line in view; off once the user scrolls away while it plays.
    followPlaying: true,
    currentRow: null,
    currentWord: null,
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
    if (created.type === "playlist") {
      openPlaylist(created);
      return;
    }
    hidePlaylist();
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
  resetPlayer();
  els.search.value = "";
  els.searchCount.textContent = "";

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
  setupPlayer(meta);
  render();
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
    a.dataset.seek = String(seconds);
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
    if (state === "done") text.append(...wordSpans(seg));
    else if (state === "silent") text.textContent = "(silence)";
    else if (state === "failed") text.textContent = "(this part could not be transcribed)";
    else {
      text.textContent = job.finished ? "(not transcribed)" : "transcribing…";
      li.setAttribute("aria-busy", job.finished ? "false" : "true");
    }
    if (state !== "pending") li.removeAttribute("aria-busy");
    li.tabIndex = -1;
    li.replaceChildren(time, text);
  }
  renderTail();
  renderChapters();
  applySearch();
  announce();
}

/** The row's text as spans with their times: Whisper's words when the job has them (a click
 * seeks to the word, playing highlights it), else its pieces. */
function wordSpans(seg) {
  const parts = [];
  for (const piece of seg.pieces || []) {
    const words = [];
    for (const w of piece.words || []) {
      // A word without a leading space (a "," or "'s" sent apart) belongs to the one before.
      if (words.length && !/^\s/.test(w.word)) {
        words[words.length - 1][2] += w.word.trim();
      } else if (w.word.trim()) {
        words.push([w.start, w.end, w.word.trim()]);
      }
    }
    const spelled = words.map((w) => w[2]).join(" ");
    if (words.length && spelled === piece.text.trim().split(/\s+/).join(" ")) parts.push(...words);
    else if (piece.text.trim()) parts.push([piece.start, piece.end, piece.text.trim()]);
  }
  if (!parts.length) parts.push([seg.start, seg.end, seg.text.trim()]);
  const out = [];
  for (const [start, end, text] of parts) {
    if (out.length) out.push(" ");
    const span = document.createElement("span");
    span.className = "w";
    span.dataset.t = String(start);
    span.dataset.e = String(end);
    span.textContent = text;
    out.push(span);
  }
  return out;
}

/** The start of the row at ``index``: its segment's, else what its neighbours tell. */
function rowStart(index) {
  const seg = job.segments.get(index);
  return seg ? seg.start : pendingRange(index)[0];
}

/** yt-dlp's chapters as headings among the rows, each before the row that starts nearest to
 * the chapter (rows are the server's segments; a chapter rarely starts exactly on one). */
function renderChapters() {
  for (const old of els.segments.querySelectorAll("li.chapter")) old.remove();
  const chapters = (job.meta && job.meta.chapters) || [];
  const rows = [...els.segments.querySelectorAll("li[data-index]")];
  for (const chapter of chapters) {
    let target = null;
    let distance = Infinity;
    for (const row of rows) {
      const start = rowStart(Number(row.dataset.index));
      if (start != null && Math.abs(start - chapter.start_time) < distance) {
        distance = Math.abs(start - chapter.start_time);
        target = row;
      }
    }
    if (!target) continue;
    const li = document.createElement("li");
    li.className = "chapter";
    const h = document.createElement("h3");
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = clock(chapter.start_time);
    h.append(time, " ", chapter.title || "Chapter");
    li.dataset.seek = String(chapter.start_time);
    li.append(h);
    els.segments.insertBefore(li, target);
  }
}

// -- search ------------------------------------------------------------------------------------

/** Rows that contain the query stay, the others are filtered out; the words of each match are
 * marked, and the count of matches is shown. Runs after every render, so it follows the stream. */
function applySearch() {
  const query = job.query;
  let matches = 0;
  for (const li of els.segments.querySelectorAll("li[data-index]")) {
    const spans = [...li.querySelectorAll(".text .w")];
    for (const span of spans) span.classList.remove("hit");
    if (!query) {
      li.classList.remove("filtered", "match");
      continue;
    }
    // The row's text with each word's place in it, so a match marks the words it touches.
    let text = "";
    const at = spans.map((span) => {
      if (text) text += " ";
      const from = text.length;
      text += span.textContent.toLowerCase();
      return [from, text.length];
    });
    let found = 0;
    for (let i = text.indexOf(query); i !== -1; i = text.indexOf(query, i + query.length)) {
      found += 1;
      spans.forEach((span, n) => {
        if (at[n][0] < i + query.length && at[n][1] > i) span.classList.add("hit");
      });
    }
    matches += found;
    li.classList.toggle("match", found > 0);
    li.classList.toggle("filtered", found === 0);
  }
  els.segments.classList.toggle("searching", Boolean(query));
  els.searchCount.textContent = !query ? "" : matches === 1 ? "1 match" : matches ? `${matches} matches` : "No matches";
}

els.search.addEventListener("input", () => {
  if (!job) return;
  job.query = els.search.value.trim().toLowerCase();
  applySearch();
});

// -- the player ----------------------------------------------------------------------------------

/** One face for the two players: the page's <audio> (uploads, links) and YouTube's iframe. */
const player = {
  kind: null, // "audio" | "youtube" | null
  yt: null,
  ytReady: false,
  jobId: null,
  time() {
    if (this.kind === "audio") return els.media.currentTime;
    return this.ytReady ? this.yt.getCurrentTime() : 0;
  },
  playing() {
    if (this.kind === "audio") return !els.media.paused && !els.media.ended;
    return this.ytReady && this.yt.getPlayerState() === YT.PlayerState.PLAYING;
  },
  seek(seconds) {
    if (this.kind === "audio") els.media.currentTime = seconds;
    else if (this.ytReady) this.yt.seekTo(seconds, true);
  },
  toggle() {
    if (this.kind === "audio") {
      if (els.media.paused) els.media.play().catch(() => {});
      else els.media.pause();
    } else if (this.ytReady) {
      if (this.playing()) this.yt.pauseVideo();
      else this.yt.playVideo();
    }
  },
};

function resetPlayer() {
  stopTicking();
  els.media.pause();
  els.media.removeAttribute("src");
  els.media.load();
  els.yt.replaceChildren();
  els.yt.hidden = true;
  els.media.hidden = false;
  els.player.hidden = true;
  els.player.querySelector(".keys").hidden = false;
  els.follow.hidden = true;
  showNote("");
  Object.assign(player, { kind: null, yt: null, ytReady: false, jobId: null });
}

function showNote(text) {
  els.playerNote.textContent = text;
  els.playerNote.hidden = !text;
}

/** YouTube: its IFrame player. Uploads: the job's own copy (/jobs/{id}/media, with Range).
 * Other links: the link itself, when the browser can play it. */
function setupPlayer(meta) {
  if (player.jobId === job.id) return; // a replayed meta event
  player.jobId = job.id;
  els.player.hidden = false;
  if (meta.is_youtube && meta.source_id) {
    youtubePlayer(meta.source_id);
    return;
  }
  player.kind = "audio";
  els.media.src = meta.url ? meta.url : `/jobs/${job.id}/media`;
}

els.media.addEventListener("error", () => {
  if (!els.media.getAttribute("src")) return;
  els.media.hidden = true;
  els.player.querySelector(".keys").hidden = true;
  player.kind = null;
  showNote(
    job && job.meta && job.meta.url
      ? "This link cannot be played in the page; the transcript follows below."
      : "The media cannot be played in this browser; the transcript follows below.",
  );
});
for (const type of ["play", "playing"]) els.media.addEventListener(type, startTicking);
for (const type of ["pause", "ended"]) els.media.addEventListener(type, () => {
  stopTicking();
  highlight(player.time());
});
for (const type of ["seeked", "timeupdate"]) els.media.addEventListener(type, () => highlight(player.time()));

function youtubePlayer(videoId) {
  player.kind = "youtube";
  els.media.hidden = true;
  els.yt.hidden = false;
  const holder = document.createElement("div");
  els.yt.replaceChildren(holder);
  const make = () => {
    player.yt = new YT.Player(holder, {
      videoId,
      width: "100%",
      playerVars: { playsinline: 1, rel: 0 },
      events: {
        onReady: () => {
          player.ytReady = true;
        },
        onStateChange: (e) => {
          if (e.data === YT.PlayerState.PLAYING) startTicking();
          else {
            stopTicking();
            highlight(player.time());
          }
        },
      },
    });
  };
  if (window.YT && window.YT.Player) {
    make();
    return;
  }
  const previous = window.onYouTubeIframeAPIReady;
  window.onYouTubeIframeAPIReady = () => {
    if (previous) previous();
    if (player.kind === "youtube" && els.yt.contains(holder)) make();
  };
  if (!document.getElementById("yt-api")) {
    const script = document.createElement("script");
    script.id = "yt-api";
    script.src = "https://www.youtube.com/iframe_api";
    script.onerror = () => {
      script.remove();
      showNote("YouTube's player could not be loaded; the times still link to the video.");
    };
    document.head.append(script);
  }
}

let ticking = 0;

function startTicking() {
  if (ticking) return;
  const tick = () => {
    highlight(player.time());
    ticking = player.playing() ? requestAnimationFrame(tick) : 0;
  };
  ticking = requestAnimationFrame(tick);
}

function stopTicking() {
  if (ticking) cancelAnimationFrame(ticking);
  ticking = 0;
}

/** Mark the row (and word) being played; keep it in view unless the user scrolled away. */
function highlight(t) {
  if (!job) return;
  let row = null;
  for (const li of els.segments.querySelectorAll("li[data-index]")) {
    const seg = job.segments.get(Number(li.dataset.index));
    if (seg && seg.start <= t && t < seg.end) row = li;
  }
  if (row !== job.currentRow) {
    if (job.currentRow) {
      job.currentRow.classList.remove("current");
      job.currentRow.removeAttribute("aria-current");
    }
    job.currentRow = row;
    if (row) {
      row.classList.add("current");
      row.setAttribute("aria-current", "true");
      if (job.followPlaying) keepInView(row);
    }
  }
  let word = null;
  if (row) {
    for (const span of row.querySelectorAll(".text .w")) if (Number(span.dataset.t) <= t + 0.05) word = span;
  }
  if (word !== job.currentWord) {
    if (job.currentWord) job.currentWord.classList.remove("spoken");
    job.currentWord = word;
    if (word) word.classList.add("spoken");
  }
}

function keepInView(row) {
  const box = row.getBoundingClientRect();
  if (box.top >= 0 && box.bottom <= innerHeight) return;
  const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
  row.scrollIntoView({ block: "center", behavior: smooth ? "smooth" : "auto" });
}

/** Seek to ``seconds`` and follow the playing line again (the user chose where to be). */
function seekTo(seconds) {
  if (!player.kind) return false;
  player.seek(seconds);
  job.followPlaying = true;
  els.follow.hidden = true;
  highlight(seconds);
  return true;
}

// Scrolling by hand while it plays stops the page from pulling the view back.
for (const type of ["wheel", "touchmove"]) {
  addEventListener(type, () => {
    if (job && player.kind && player.playing() && job.followPlaying) {
      job.followPlaying = false;
      els.follow.hidden = false;
    }
  }, { passive: true });
}

els.follow.addEventListener("click", () => {
  job.followPlaying = true;
  els.follow.hidden = true;
  if (job.currentRow) keepInView(job.currentRow);
});

els.segments.addEventListener("click", (event) => {
  if (!job || !player.kind || String(getSelection())) return;
  const link = event.target.closest("[data-seek]");
  const word = event.target.closest(".w");
  const row = event.target.closest("li[data-index]");
  let seconds = null;
  if (link) seconds = Number(link.dataset.seek);
  else if (word) seconds = Number(word.dataset.t);
  else if (row && job.segments.has(Number(row.dataset.index))) seconds = job.segments.get(Number(row.dataset.index)).start;
  if (seconds == null || !isFinite(seconds)) return;
  if (link && link.tagName === "A" && player.kind === "youtube" && !player.ytReady) return; // open YouTube
  event.preventDefault();
  seekTo(seconds);
});

/** The rows a listener can move between: those with a transcript. */
function playableRows() {
  return [...els.segments.querySelectorAll("li[data-index]")].filter(
    (li) => job.segments.has(Number(li.dataset.index)) && !li.classList.contains("filtered"),
  );
}

document.addEventListener("keydown", (event) => {
  if (!job || !player.kind || event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  if (target.closest && target.closest("input, textarea, select, button, a, audio, [contenteditable]")) return;
  if (event.key === " ") {
    event.preventDefault();
    player.toggle();
  } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    const rows = playableRows();
    if (!rows.length) return;
    event.preventDefault();
    const from = rows.indexOf(target.closest ? target.closest("li[data-index]") : null);
    const here = from !== -1 ? from : rows.indexOf(job.currentRow);
    const step = event.key === "ArrowDown" ? 1 : -1;
    const next = rows[Math.max(0, Math.min(rows.length - 1, here === -1 ? 0 : here + step))];
    next.focus({ preventScroll: true });
    keepInView(next);
    seekTo(job.segments.get(Number(next.dataset.index)).start);
  }
});

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

// -- playlists (web/playlist.js draws them; an entry opens in the job view above) ---------------

function openPlaylist(view) {
  history.replaceState(null, "", `#playlist=${view.id}`);
  els.job.hidden = true;
  showPlaylist(view, { openJob: (id) => follow(id), authHeaders });
}

async function reopenPlaylist(id) {
  const response = await fetch(`/playlists/${id}`, { headers: authHeaders() });
  if (response.ok) openPlaylist(await response.json());
  else showError(els.formError, await problem(response));
}

// The cookie first: a reload's EventSource below needs it.
if (token()) {
  els.token.value = token();
  rememberTokenCookie(token());
}
// A reload (or a shared link) with #job=ID follows that job again, replayed from the start.
const match = location.hash.match(/^#job=([0-9a-f]{8,64})$/);
if (match) follow(match[1]);
const listed = location.hash.match(/^#playlist=([0-9a-f]{8,64})$/);
if (listed) reopenPlaylist(listed[1]);
