// A playlist, channel or feed on the page: the list of its entries with each one's status and
// progress, from /playlists/{id}/events (one EventSource for the whole playlist: `playlist`
// events for the totals, every entry's own events tagged with its `job_id`). Opening an entry
// shows its live transcript through the page's ordinary job view; "Download all" is the zip.

const $ = (id) => document.getElementById(id);

const STATUS_WORDS = {
  queued: "waiting",
  running: "transcribing",
  done: "done",
  error: "failed",
  cancelled: "cancelled",
  interrupted: "interrupted",
};

let current = null;

/**
 * Show playlist `view` (the body of POST /jobs or GET /playlists/{id}) and follow it live.
 * `ui`: {openJob(id), authHeaders()} from the page (GET links and EventSource carry the
 * token in the page's cookie, never in the URL).
 */
export function showPlaylist(view, ui) {
  if (current) current.source.close();
  const section = $("playlist");
  section.hidden = false;
  $("playlist-title").textContent = view.title || "Playlist";
  showNotice(view.notice);
  const zip = () => `/playlists/${view.id}/transcripts.zip?format=${$("playlist-format").value}`;
  $("playlist-zip").href = zip();
  $("playlist-format").onchange = () => ($("playlist-zip").href = zip());
  const list = $("entries");
  list.replaceChildren(...view.jobs.map((j, i) => entryRow(j, i, ui)));
  const state = { id: view.id, finished: view.status !== "running", source: null };
  current = state;
  setCounts(view.counts || count(view.jobs), view.status);
  $("playlist-cancel").disabled = state.finished;
  $("playlist-cancel").onclick = () => cancel(state, ui);

  const es = new EventSource(view.events_url || `/playlists/${view.id}/events`);
  state.source = es;
  const on = (type, handler) =>
    es.addEventListener(type, (e) => {
      if (e.data !== undefined && current === state) handler(JSON.parse(e.data));
    });
  on("playlist", (p) => {
    if (p.job_id) setEntry(p.job_id, { status: p.job_status });
    setCounts(p.counts, p.status);
    if (p.status !== "running") {
      state.finished = true;
      $("playlist-cancel").disabled = true;
      es.close();
    }
  });
  on("meta", (m) => setEntry(m.job_id, { status: "running", duration: m.duration }));
  on("progress", (p) => {
    const duration = p.duration || rowOf(p.job_id)?.dataset.duration;
    let fraction = p.segments_total ? p.segments_done / p.segments_total : 0;
    if (!p.decoding_done && duration) fraction = Math.min(1, p.audio_done / duration);
    setEntry(p.job_id, { status: "running", fraction });
  });
  on("done", (d) => setEntry(d.job_id, { status: "done", fraction: 1 }));
  on("error", (err) => setEntry(err.job_id, { status: err.code === "cancelled" ? "cancelled" : "error", message: err.message }));
  return state;
}

/** Stop following (the page shows a single job instead). */
export function hidePlaylist() {
  if (current) current.source.close();
  current = null;
  $("playlist").hidden = true;
}

function entryRow(job, index, ui) {
  const li = document.createElement("li");
  li.className = "entry";
  li.dataset.job = job.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "entry-open";
  open.textContent = `${index + 1}. ${job.title || job.url}`;
  open.title = "Show this transcript";
  open.addEventListener("click", () => {
    for (const row of document.querySelectorAll("#entries li.entry")) row.classList.toggle("selected", row === li);
    ui.openJob(job.id);
  });
  const status = document.createElement("span");
  status.className = "status";
  const bar = document.createElement("div");
  bar.className = "progress";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", `Progress of ${job.title || "this entry"}`);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.append(Object.assign(document.createElement("div"), { className: "bar" }));
  const note = document.createElement("p");
  note.className = "entry-note";
  note.hidden = true;
  li.append(open, status, bar, note);
  paint(li, { status: job.status, fraction: job.progress ?? (job.status === "done" ? 1 : 0), message: job.error });
  return li;
}

function rowOf(jobId) {
  return jobId ? document.querySelector(`#entries li.entry[data-job="${CSS.escape(jobId)}"]`) : null;
}

function setEntry(jobId, change) {
  const li = rowOf(jobId);
  if (li) paint(li, change);
}

function paint(li, { status, fraction, message, duration }) {
  if (duration) li.dataset.duration = String(duration);
  if (status) {
    li.dataset.status = status;
    const badge = li.querySelector(".status");
    badge.textContent = STATUS_WORDS[status] || status;
    badge.className = `status ${status === "done" ? "good" : status === "error" || status === "cancelled" ? "bad" : "busy"}`;
  }
  if (fraction != null) {
    const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
    li.querySelector(".progress .bar").style.width = `${pct}%`;
    li.querySelector(".progress").setAttribute("aria-valuenow", String(pct));
  }
  if (message) {
    const note = li.querySelector(".entry-note");
    note.textContent = message;
    note.hidden = false;
  }
}

function count(jobs) {
  const counts = {};
  for (const j of jobs) counts[j.status] = (counts[j.status] || 0) + 1;
  return counts;
}

function setCounts(counts, status) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const parts = [`${counts.done || 0} of ${total} done`];
  if (counts.running) parts.push(`${counts.running} transcribing`);
  if (counts.queued) parts.push(`${counts.queued} waiting`);
  if (counts.error) parts.push(`${counts.error} failed`);
  if (counts.cancelled) parts.push(`${counts.cancelled} cancelled`);
  $("playlist-counts").textContent = parts.join(" · ");
  const badge = $("playlist-status");
  badge.textContent = status === "running" ? "running" : status;
  badge.className = `status ${status === "running" ? "busy" : status === "done" ? "good" : "bad"}`;
}

function showNotice(notice) {
  const el = $("playlist-notice");
  el.textContent = notice || "";
  el.hidden = !notice;
}

async function cancel(state, ui) {
  $("playlist-cancel").disabled = true;
  try {
    const response = await fetch(`/playlists/${state.id}`, { method: "DELETE", headers: ui.authHeaders() });
    if (response.ok) {
      const view = await response.json();
      for (const j of view.jobs) setEntry(j.id, { status: j.status });
      setCounts(view.counts, view.status);
    }
  } catch {
    $("playlist-cancel").disabled = false;
  }
}
