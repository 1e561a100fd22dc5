"use strict";
// The Vigil console: the unit board (a tile per bed), the alert list, the patient panel with
// the patient's open alerts bundled, silences, assignments and escalation, sound and desktop
// notifications. One WebSocket (schemas/ws/); inlined into console.html by src/http/console.rs.
const RANK = { critical: 4, high: 3, medium: 2, low: 1, info: 0 };
const SEV_TEXT = { critical: "critical", high: "high", medium: "medium", low: "low", info: "info" };
// Rules raised by the host rather than a rule file.
const HOST_TITLES = { "device.offline": "Monitor offline (no data)" };
const SILENCE_REASONS = [["rrt_at_bedside", "RRT at the bedside"], ["clinician_at_bedside", "Clinician at the bedside"],
  ["procedure", "Procedure in progress"], ["known_and_treated", "Known and being treated"], ["transport", "In transport"]];
const SILENCE_MINUTES = [5, 10, 15, 30, 60, 120];
const RESOLVE_REASONS = ["Treated, condition improved", "Reviewed: not clinically significant", "False alarm (artefact, sensor off)",
  "Patient transferred or discharged", "Duplicate alert", "Other"];
const alerts = new Map();
const routes = new Map();      // alert id -> route (assigned, chain, next step, receipts)
const silences = new Map();    // silence id -> open silence
const census = new Map();      // patient id -> occupied bed (unit, bed, name, current NEWS2 or null)
let censusTruncated = false;
const pending = new Map();
// When an alert reached its current severity, as the server keeps it ("4 min ago" counts
// from it); an older server sends only raised_at.
function sevSince(a) { return a.severity_since || a.raised_at; }
let lastSeq = null, ws = null, backoff = 500, refs = 0, live = false, everLive = false, lastUpdate = null, reconnectTimer = null;
let me = { user: null, role: null }, ruleTitles = {}, assignments = [];
let view = localStorage.getItem("vigil.view") === "list" ? "list" : "board";
const $ = (id) => document.getElementById(id);

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem("vigil.token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  return sessionStorage.getItem("vigil.token");
}
function ago(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return "just now";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  const h = Math.floor(s / 3600);
  return h + " h " + Math.floor((s % 3600) / 60) + " min ago";
}
function until(iso) {
  const s = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
  return s < 60 ? s + " s" : Math.ceil(s / 60) + " min";
}
function clock(iso) { const d = new Date(iso); return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }); }
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function cell(text, cls) { return el("td", cls, text); }
function setText(e, text) { if (e.textContent !== text) e.textContent = text; }
function sevBadge(sev) { return el("span", "sev " + sev, SEV_TEXT[sev] || sev); }
function title(a) { return ruleTitles[a.rule.id] || HOST_TITLES[a.rule.id] || a.rule.id; }
function bedOf(p) { return p.room ? p.room + "-" + p.bed : (p.bed || "?"); }
function place(l) {
  if (!l) return "";
  return [l.unit, l.room ? "room " + l.room : "", l.bed ? "bed " + l.bed : ""].filter(Boolean).join(" · ");
}
function toast(text) { const t = $("toast"); t.textContent = text; t.hidden = false; setTimeout(() => { t.hidden = true; }, 5000); }
function announce(text) { const l = $("live"); l.textContent = ""; setTimeout(() => { l.textContent = text; }, 50); }

// ---- sound: one AudioContext, a tone per severity, critical repeats until acknowledged ----
let audio = null, soundBlocked = false;
function audioContext() {
  if (!audio) {
    try { audio = new (window.AudioContext || window.webkitAudioContext)(); } catch (e) { audio = null; }
    if (audio) audio.onstatechange = showSoundState;
  }
  return audio;
}
function showSoundState() {
  soundBlocked = !!audio && audio.state !== "running";
  $("soundblock").hidden = !soundBlocked || mutedNow();
}
const TONES = { critical: [[988, 0.18], [784, 0.18], [988, 0.18], [784, 0.18]], high: [[740, 0.22], [587, 0.22]], medium: [[523, 0.3]] };
function tone(severity) {
  window.__tones = (window.__tones || 0) + 1;
  const ctx = audioContext();
  if (!ctx) return;
  if (ctx.state !== "running") { showSoundState(); return; }
  let t = ctx.currentTime;
  for (const [f, d] of TONES[severity] || []) {
    const o = ctx.createOscillator(), g = ctx.createGain();
    o.frequency.value = f; g.gain.value = 0.15; o.connect(g); g.connect(ctx.destination);
    o.start(t); o.stop(t + d); t += d + 0.05;
  }
}
// Mute lasts until the end of the shift (07:00 or 19:00, whichever comes first).
function shiftEnd(now) {
  const d = new Date(now); const end = new Date(d);
  if (d.getHours() < 7) end.setHours(7, 0, 0, 0);
  else if (d.getHours() < 19) end.setHours(19, 0, 0, 0);
  else { end.setDate(end.getDate() + 1); end.setHours(7, 0, 0, 0); }
  return end.getTime();
}
function mutedNow() { const u = Number(localStorage.getItem("vigil.muteUntil") || 0); return u > Date.now(); }
function showMute() {
  const m = mutedNow(), b = $("mute");
  b.textContent = m ? "Sound muted until " + new Date(Number(localStorage.getItem("vigil.muteUntil"))).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "Sound on";
  b.setAttribute("aria-pressed", String(m));
  showSoundState();
}
// Desktop notifications where the user allows them: the permission is asked only from a click
// on "Desktop notifications" (never on load); then a notification for each alert this console
// sounds (so silences, bundling and who it reaches apply) at or above the chosen severity
// (vigil.notifyMin, "high or above" unless changed), none while sound is muted. Bed, unit,
// severity and rule only: lock screens show them. One per patient at a time (tag).
function notifyMin() { const m = localStorage.getItem("vigil.notifyMin"); return m in RANK || m === "off" ? m : "high"; }
function showNotifyPerm() {
  const has = "Notification" in window;
  $("notify-perm").hidden = !has || Notification.permission !== "default";
  $("notify-min-l").hidden = !has || Notification.permission !== "granted";
  $("notify-min").value = notifyMin();
}
function desktop(a) {
  if (!("Notification" in window) || Notification.permission !== "granted" || mutedNow()) return;
  const min = notifyMin();
  if (min === "off" || RANK[a.severity] < RANK[min]) return;
  window.__desktop = (window.__desktop || 0) + 1;
  try { new Notification("Vigil: " + SEV_TEXT[a.severity].toUpperCase() + " · " + a.patient.unit + " bed " + bedOf(a.patient), { body: title(a), tag: a.patient.id, renotify: true }); } catch (e) { /* not allowed here */ }
}

// ---- who is notified: silences, assignments and escalation, bundling per patient ----
function silenceOf(a) {
  for (const s of silences.values()) {
    if (s.ended || Date.parse(s.until) <= Date.now()) continue;
    if (s.patient === a.patient.id && (!s.alert_id || s.alert_id === a.id)) return s;
  }
  return null;
}
function patientSilence(pid) {
  for (const s of silences.values()) if (!s.ended && Date.parse(s.until) > Date.now() && s.patient === pid && !s.alert_id) return s;
  return null;
}
// An alert reaches this console's user now: they are assigned to the bed, nobody is, or it
// has escalated to their role (or a unit they hold).
function reachesMe(a) {
  const r = routes.get(a.id);
  if (!r || !r.assigned || r.assigned.length === 0) return true;
  if (r.assigned.includes(me.user)) return true;
  const e = a.escalation;
  return !!e && (e.roles.includes(me.role) || e.units.some((u) => myUnits.includes(u)));
}
let myUnits = [];
// The highest severity sounded per patient while their bundle stays open and unacknowledged:
// another alert of the same patient at the same or a lower severity is shown, not sounded.
const sounded = new Map();
const escalationSounded = new Map();
function notify(a) {
  window.__notifyFrames = (window.__notifyFrames || 0) + 1;
  if (a.status !== "active") return;
  const level = a.escalation ? a.escalation.level : 0;
  const escalated = level > (escalationSounded.get(a.id) || 0);
  if (escalated) escalationSounded.set(a.id, level);
  if (!reachesMe(a)) return;
  if (silenceOf(a)) { window.__silenced = (window.__silenced || 0) + 1; return; }
  const prev = sounded.get(a.patient.id);
  if (!escalated && prev !== undefined && RANK[a.severity] <= prev) { window.__bundled = (window.__bundled || 0) + 1; return; }
  sounded.set(a.patient.id, Math.max(prev === undefined ? -1 : prev, RANK[a.severity]));
  window.__notifications = (window.__notifications || 0) + 1;
  const per = window.__perPatient || (window.__perPatient = {});
  per[a.patient.id] = (per[a.patient.id] || 0) + 1;
  if (!mutedNow()) tone(a.severity);
  desktop(a);
  if (a.severity === "critical") announce("New critical alert: " + a.patient.unit + " bed " + bedOf(a.patient) + ", " + title(a));
}
// A patient whose bundle is quiet (nothing unacknowledged) sounds again on the next alert.
function forgetQuietBundles() {
  const unacked = new Set([...alerts.values()].filter((a) => a.status === "active").map((a) => a.patient.id));
  for (const pid of [...sounded.keys()]) if (!unacked.has(pid)) sounded.delete(pid);
}
// Critical alerts repeat every 20 s until acknowledged or silenced.
setInterval(() => {
  if (mutedNow()) return;
  const due = [...alerts.values()].some((a) => a.status === "active" && a.severity === "critical" && !silenceOf(a) && reachesMe(a));
  if (due) tone("critical");
}, 20000);

// ---- commands ----
const acking = new Set();
function send(frame, offline) {
  if (!ws || ws.readyState !== 1) { toast(offline || "Not connected: try again in a moment"); return false; }
  ws.send(JSON.stringify(frame)); return true;
}
function command(type, alertId, extra) {
  const ref = "r" + (++refs);
  const frame = Object.assign({ type, ref }, alertId ? { alert_id: alertId } : {}, extra || {});
  if (!send(frame)) return;
  pending.set(ref, { type, alertId });
  if (type === "ack") { acking.add(alertId); render(); }
}
function ack(a) { if (a && a.status === "active" && !acking.has(a.id)) command("ack", a.id); }
const receipted = new Set();
function receipt(a, kind) {
  const key = kind + " " + a.id;
  if (receipted.has(key) || !ws || ws.readyState !== 1) return;
  receipted.add(key);
  ws.send(JSON.stringify({ type: "receipt", alert_id: a.id, kind }));
}

// ---- filters ----
function filters() { return { unit: $("f-unit").value, sev: $("f-sev").value, status: $("f-status").value }; }
function passes(a, f) {
  if (f.unit && a.patient.unit !== f.unit) return false;
  if (f.sev && RANK[a.severity] < RANK[f.sev]) return false;
  if (f.status === "active" || f.status === "acknowledged") return a.status === f.status;
  return true;
}

// ---- the unit board: a tile per bed ----
const tilesById = new Map();
function beds() {
  const byPatient = new Map();
  for (const a of alerts.values()) {
    if (a.status === "resolved") continue;
    let b = byPatient.get(a.patient.id);
    if (!b) { b = { patient: a.patient, open: [] }; byPatient.set(a.patient.id, b); }
    b.open.push(a);
    if (Date.parse(a.updated_at) >= Date.parse(b.patient.__at || 0)) { b.patient = Object.assign({}, a.patient, { __at: a.updated_at }); }
  }
  // Every occupied bed has a tile, alert or not; the census says where the patient is now.
  for (const c of census.values()) {
    const at = { id: c.patient, name: c.name, unit: c.unit, room: c.room, bed: c.bed };
    const b = byPatient.get(c.patient);
    if (b) { b.patient = Object.assign({}, b.patient, at); b.census = c; }
    else byPatient.set(c.patient, { patient: at, open: [], census: c });
  }
  for (const b of byPatient.values()) {
    b.open.sort((x, y) => (RANK[y.severity] - RANK[x.severity]) || (Date.parse(sevSince(x)) - Date.parse(sevSince(y))));
    b.top = b.open[0];
    b.unacked = b.open.filter((a) => a.status === "active");
    b.news2 = b.open.find((a) => a.rule.id === "news2");
    b.offline = b.open.some((a) => a.rule.id === "device.offline");
    b.score = newsOf(b);
  }
  return [...byPatient.values()];
}
// The current NEWS2: the census's (from the latest vital signs), else an open NEWS2 alert's;
// null when none is known ("no score", never a low one).
function newsOf(b) {
  if (b.census && b.census.news2) return b.census.news2;
  if (b.news2 && b.news2.score !== null) return { score: b.news2.score, band: b.news2.details && b.news2.details.band, stale: b.news2.stale };
  return null;
}
const sevRank = (b) => (b.top ? RANK[b.top.severity] : -1);
// Open alerts first (severity, unacknowledged, NEWS2, longest open), then quiet beds by NEWS2.
function acuity(x, y) {
  return (sevRank(y) - sevRank(x)) || ((y.unacked.length > 0) - (x.unacked.length > 0))
    || ((y.score ? y.score.score : -1) - (x.score ? x.score.score : -1))
    || (x.top && y.top && (Date.parse(sevSince(x.top)) - Date.parse(sevSince(y.top))))
    || (bedOf(x.patient) < bedOf(y.patient) ? -1 : 1);
}
function makeTile(pid) {
  const t = el("div", "tile"); t.tabIndex = 0; t.setAttribute("role", "button"); t.dataset.patient = pid;
  const parts = { t };
  const t1 = el("div", "t1"); parts.bed = el("span", "bed"); parts.sev = el("span", "sev"); parts.off = el("span", "offline", "DEVICE OFFLINE");
  t1.append(parts.bed, parts.off, parts.sev);
  parts.name = el("span", "name"); parts.news = el("span", "news"); parts.rule = el("span", "rule");
  parts.state = el("span", "state"); parts.esc = el("span", "esc"); parts.sil = el("span", "sil");
  t.append(t1, parts.name, parts.news, parts.rule, parts.state, parts.esc, parts.sil);
  const open = () => openPatient(pid, t);
  t.addEventListener("click", open);
  t.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
  tilesById.set(pid, parts);
  return parts;
}
function newsLine(p, n) {
  if (n) p.news.replaceChildren("NEWS2 ", el("b", "", String(n.score)), (n.band ? " · " + n.band : "") + (n.partial ? " · partial" : "") + (n.stale ? " · stale" : ""));
  else p.news.replaceChildren("NEWS2 – no score");
}
// A bed with no open alert: a compact tile with its bed, patient and current NEWS2.
function fillQuietTile(p, b) {
  if (p.t.className !== "tile quiet") p.t.className = "tile quiet";
  p.t.dataset.unit = b.patient.unit; p.t.dataset.bed = bedOf(b.patient); p.t.dataset.severity = "none";
  setText(p.bed, bedOf(b.patient));
  p.sev.className = "sev"; setText(p.sev, "");
  p.off.hidden = true;
  setText(p.name, b.patient.name || "(no name)");
  newsLine(p, b.score);
  setText(p.rule, "no open alert"); p.rule.title = "";
  p.state.className = "state"; setText(p.state, "");
  setText(p.esc, "");
  const s = patientSilence(b.patient.id);
  setText(p.sil, s ? "Silenced " + until(s.until) + " · " + reasonText(s.reason) + " · " + s.by : ""); p.sil.hidden = !s;
  p.t.setAttribute("aria-label", b.patient.unit + " bed " + bedOf(b.patient) + ", no open alert, " + (b.score ? "NEWS2 " + b.score.score + (b.score.partial ? " partial" : "") : "no NEWS2 score"));
}
function fillTile(p, b) {
  if (!b.top) { fillQuietTile(p, b); return; }
  const a = b.top;
  const cls = "tile " + a.severity + (b.unacked.length ? " unacked" : " acked");
  if (p.t.className !== cls) p.t.className = cls;
  p.t.dataset.unit = b.patient.unit; p.t.dataset.bed = bedOf(b.patient); p.t.dataset.severity = a.severity;
  setText(p.bed, bedOf(b.patient));
  p.sev.className = "sev " + a.severity; setText(p.sev, SEV_TEXT[a.severity]);
  p.off.hidden = !b.offline;
  setText(p.name, b.patient.name || "(no name)");
  newsLine(p, b.score);
  const more = b.open.length > 1 ? " +" + (b.open.length - 1) : "";
  setText(p.rule, title(a) + more);
  p.rule.title = b.open.map((x) => SEV_TEXT[x.severity] + ": " + title(x)).join("\n");
  const since = sevSince(a);
  if (b.unacked.length) { p.state.className = "state unacked"; setText(p.state, "UNACKED · " + ago(since)); }
  else { p.state.className = "state"; setText(p.state, "acked by " + (a.acknowledged ? a.acknowledged.by : "?") + " · " + ago(since)); }
  const r = routes.get(a.id);
  setText(p.esc, escLine(a, r, true));
  const s = patientSilence(b.patient.id) || silenceOf(a);
  setText(p.sil, s ? "Silenced " + until(s.until) + " · " + reasonText(s.reason) + " · " + s.by : "");
  p.sil.hidden = !s;
  p.t.setAttribute("aria-label", b.patient.unit + " bed " + bedOf(b.patient) + ", " + SEV_TEXT[a.severity] + ", " + title(a) + (b.unacked.length ? ", unacknowledged" : ", acknowledged") + (s ? ", silenced" : ""));
}
function escLine(a, r, short) {
  const parts = [];
  if (a.escalation) parts.push("escalated L" + a.escalation.level + (r && r.current ? " → " + r.current : "") + (short ? "" : " at " + clock(a.escalation.at)));
  else if (r && r.assigned && r.assigned.length) parts.push("nurse " + r.assigned.join(", "));
  if (r && r.next && a.status === "active") parts.push("next: " + r.next.label + " in " + until(r.next.at));
  return parts.join(" · ");
}
function reasonText(code) { const r = SILENCE_REASONS.find(([c]) => c === code); return r ? r[1] : code; }
function renderBoard() {
  const f = filters();
  const all = beds();
  const shown = all.filter((b) => {
    if (f.unit && b.patient.unit !== f.unit) return false;
    if (f.sev && sevRank(b) < RANK[f.sev]) return false;
    if (f.status === "active") return b.unacked.length > 0;
    if (f.status === "acknowledged") return b.open.length > 0 && b.unacked.length === 0;
    if (f.status === "quiet") return b.open.length === 0;
    return true;
  }).sort(acuity);
  const units = [...new Set(all.map((b) => b.patient.unit))].sort();
  syncUnitFilter(units);
  const board = $("units-board");
  const sections = new Map([...board.children].map((s) => [s.dataset.unit, s]));
  const seen = new Set();
  units.filter((u) => !f.unit || u === f.unit).forEach((unit, position) => {
    let sec = sections.get(unit);
    if (!sec) {
      sec = el("section", "unit"); sec.dataset.unit = unit;
      const head = el("div", "unit-head"); head.append(el("h2", "", unit), el("span", "count"));
      sec.append(head, el("div", "grid"));
    }
    // Units stay in name order whichever unit's first alert arrived first.
    if (board.children[position] !== sec) board.insertBefore(sec, board.children[position] || null);
    const mine = shown.filter((b) => b.patient.unit === unit);
    const unacked = mine.filter((b) => b.unacked.length).length;
    const alerting = mine.filter((b) => b.open.length).length;
    setText(sec.querySelector(".count"), mine.length + " beds · " + alerting + " with open alerts · " + unacked + " unacknowledged"
      + (censusTruncated ? " · census incomplete (too many beds)" : ""));
    const grid = sec.querySelector(".grid");
    const focused = document.activeElement;
    mine.forEach((b, i) => {
      const p = tilesById.get(b.patient.id) || makeTile(b.patient.id);
      fillTile(p, b); seen.add(b.patient.id);
      if (grid.children[i] !== p.t) grid.insertBefore(p.t, grid.children[i] || null);
      if (view === "board" && !document.hidden) for (const a of b.open) receipt(a, "delivered");
    });
    if (focused && focused !== document.activeElement && grid.contains(focused)) focused.focus({ preventScroll: true });
    seen.add("unit:" + unit);
  });
  for (const [pid, p] of tilesById) if (!seen.has(pid)) { p.t.remove(); tilesById.delete(pid); }
  for (const sec of [...board.children]) if (!seen.has("unit:" + sec.dataset.unit)) sec.remove();
  document.body.classList.toggle("dense", shown.length > 36);
}
let knownUnits = "";
function syncUnitFilter(units) {
  const key = units.join("|");
  if (key === knownUnits) return;
  knownUnits = key;
  const sel = $("f-unit"), cur = sel.value;
  sel.replaceChildren(el("option", "", "all"));
  sel.firstChild.value = "";
  for (const u of units) { const o = el("option", "", u); o.value = u; sel.append(o); }
  sel.value = units.includes(cur) ? cur : "";
}

// ---- the alert list ----
// Rows are created once per alert id and updated in place: a frame never replaces a button the
// user is pressing or a focused element. While the pointer is over the table or focus is in it,
// rows keep their places (new alerts are added below, resolved ones stay greyed); the list is
// re-sorted once the pointer and focus leave.
const rowsById = new Map();
let pointerIn = false, pressed = false, renderTimer = null, heldNew = 0, signedOut = false;
function held() {
  const f = document.activeElement;
  return pointerIn || pressed || ($("rows").contains(f) && f.matches(":focus-visible"));
}
function makeRow(id) {
  const tr = document.createElement("tr"); tr.dataset.alertId = id;
  const r = { tr, sev: cell("", "sev-cell"), pt: cell("", "pt"), loc: cell("", "loc"), rule: cell("", "rule"), score: cell("", "score"),
              summary: cell(""), age: cell("", "muted"), status: cell("", "status"), act: cell("") };
  r.badge = el("span", "sev"); r.sev.append(r.badge); r.sev.classList.add("sev");
  r.name = el("span", "name"); r.mrn = el("span", "mrn"); r.pt.append(r.name, r.mrn);
  r.unit = el("span", "unit"); r.where = el("span", "where"); r.loc.append(r.unit, r.where);
  r.rulename = el("span"); r.finding = el("span", "finding"); r.rule.append(r.rulename, r.finding);
  r.val = el("span"); r.stale = el("span", "stale"); r.score.append(r.val, r.stale);
  r.state = el("span", "state"); r.by = el("span", "by"); r.status.append(r.state, r.by);
  r.pt.onclick = () => { const a = alerts.get(id); if (a) openPatient(a.patient.id, r.pt); };
  r.ack = el("button", "act ack"); r.ack.type = "button";
  r.ack.onclick = () => ack(alerts.get(id));
  r.resolve = el("button", "act resolve", "Resolve"); r.resolve.type = "button";
  r.resolve.onclick = () => { const a = alerts.get(id); if (a) openPatient(a.patient.id, r.resolve); };
  r.act.append(r.ack, r.resolve);
  tr.append(r.sev, r.pt, r.loc, r.rule, r.score, r.summary, r.age, r.status, r.act);
  rowsById.set(id, r);
  return r;
}
function fill(r, a) {
  const cls = a.severity + " " + a.status;
  if (r.tr.className !== cls) r.tr.className = cls;
  r.tr.dataset.rule = a.rule.id;
  r.badge.className = "sev " + a.severity;
  setText(r.badge, a.escalation ? SEV_TEXT[a.severity] + " · escalated" : SEV_TEXT[a.severity]);
  setText(r.name, a.patient.name || "(no name)");
  setText(r.mrn, "MRN " + a.patient.mrn);
  setText(r.unit, a.patient.unit || "(no unit)");
  setText(r.where, [a.patient.room ? "room " + a.patient.room : "", a.patient.bed ? "bed " + a.patient.bed : ""].filter(Boolean).join(" · "));
  setText(r.rulename, title(a));
  // The rule id, and which finding when the rule raises one alert per finding.
  const sub = a.rule.id + (a.finding ? " · " + a.finding : "");
  setText(r.finding, sub);
  if (r.rule.title !== title(a) + "\n" + sub) r.rule.title = title(a) + "\n" + sub;
  setText(r.val, a.score === null ? "–" : String(a.score));
  setText(r.stale, a.stale ? "stale" : "");
  if (r.score.title !== (a.stale ? "data missing or out of date at the last evaluation" : "")) r.score.title = a.stale ? "data missing or out of date at the last evaluation" : "";
  setText(r.summary, a.summary);
  if (r.summary.title !== a.summary) r.summary.title = a.summary;
  setText(r.age, ago(sevSince(a)));
  setText(r.state, a.status);
  setText(r.by, a.status === "acknowledged" && a.acknowledged ? " by " + a.acknowledged.by + " " + ago(a.acknowledged.at) : "");
  const st = a.status === "acknowledged" && a.acknowledged ? "acknowledged by " + a.acknowledged.by : a.status;
  if (r.status.title !== st) r.status.title = st;
  const sent = a.status === "active" && acking.has(a.id);
  const canAck = a.status === "active" && !sent;
  setText(r.ack, sent ? "Acknowledging…" : canAck ? "Acknowledge" : a.status === "acknowledged" ? "Acknowledged" : "Resolved");
  if (r.ack.getAttribute("aria-disabled") !== String(!canAck)) r.ack.setAttribute("aria-disabled", String(!canAck));
}
function order(a, b) { return (RANK[b.severity] - RANK[a.severity]) || (Date.parse(a.raised_at) - Date.parse(b.raised_at)) || (a.id < b.id ? -1 : 1); }
function renderList() {
  const rows = $("rows");
  const f = filters();
  const open = [...alerts.values()].filter((a) => a.status !== "resolved" && passes(a, f)).sort(order);
  const keep = new Set(open.map((a) => a.id));
  const hold = held();
  let added = 0;
  for (const a of open) {
    let r = rowsById.get(a.id);
    if (!r) { r = makeRow(a.id); rows.append(r.tr); added++; }
    fill(r, a);
    if (view === "list" && !document.hidden) receipt(a, "delivered");
  }
  for (const [id, r] of rowsById) {
    if (keep.has(id)) continue;
    const a = alerts.get(id);
    if (hold && a) { fill(r, a); continue; }
    r.tr.remove(); rowsById.delete(id);
  }
  if (hold) {
    if (added) heldNew += added;
  } else {
    heldNew = 0;
    const focused = document.activeElement;
    let i = 0;
    for (const a of open) {
      const tr = rowsById.get(a.id).tr;
      if (rows.children[i] !== tr) rows.insertBefore(tr, rows.children[i] || null);
      i++;
    }
    if (focused && focused !== document.activeElement && rows.contains(focused)) focused.focus({ preventScroll: true });
  }
  $("held").hidden = !(hold && heldNew > 0 && view === "list");
  setText($("held"), heldNew === 1 ? "1 new alert added at the bottom: the list is re-sorted when the pointer leaves it"
                                   : heldNew + " new alerts added at the bottom: the list is re-sorted when the pointer leaves it");
  return open.length;
}
function render() {
  renderTimer = null;
  // Resolved alerts leave the map once off the list; when they changed is kept (bounded) so a
  // late, older frame cannot bring one back.
  const listed = renderList();
  for (const [id, a] of alerts) {
    if (a.status !== "resolved" || rowsById.has(id)) continue;
    alerts.delete(id); routes.delete(id); gone.delete(id); gone.set(id, a);
    if (gone.size > MAX_GONE) gone.delete(gone.keys().next().value);
  }
  renderBoard();
  forgetQuietBundles();
  const openCount = [...alerts.values()].filter((a) => a.status !== "resolved").length;
  const empty = $("empty");
  empty.hidden = (view === "list" ? listed : openCount) > 0;
  setText(empty, live ? (openCount ? "No alert matches the filters." : "No active alerts.") : everLive ? "Not connected: the alert list is unknown." : "Connecting…");
  const unacked = [...alerts.values()].filter((a) => a.status === "active").length;
  const t = signedOut ? "Sign in · Vigil" : (unacked ? "(" + unacked + ") " : "") + "Vigil" + (live ? "" : everLive ? " (offline)" : "");
  if (document.title !== t) document.title = t;
  if (patient) renderPatientAlerts();
}
function scheduleRender() { if (renderTimer === null) renderTimer = setTimeout(render, 30); }
function setView(v) {
  view = v; localStorage.setItem("vigil.view", v);
  $("units-board").hidden = v !== "board"; $("list").hidden = v !== "list";
  $("view-board").setAttribute("aria-pressed", String(v === "board")); $("view-list").setAttribute("aria-pressed", String(v === "list"));
  render();
}
// RFC 3339 UTC times with the fraction padded to nanoseconds compare as text.
function stamp(iso) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/.exec(iso || "");
  return m ? m[1] + "." + (m[2] || "").padEnd(9, "0") : null;
}
// A change older than the one shown is dropped: the reply to an acknowledgement can overtake
// the broadcast of an earlier change to the same alert.
function newer(next, prev) {
  if (!prev) return true;
  const a = stamp(next.updated_at), b = stamp(prev.updated_at);
  if (a !== null && b !== null) return a >= b;
  return !(Date.parse(next.updated_at) < Date.parse(prev.updated_at));
}
const gone = new Map(), MAX_GONE = 5000;
function apply(alert, route) {
  const prev = alerts.get(alert.id) || gone.get(alert.id);
  if (!newer(alert, prev)) return false;
  alerts.set(alert.id, alert);
  if (route) routes.set(alert.id, route);
  if (patient && alert.patient.id === patient.id) {
    patient.open_alerts = patient.open_alerts.filter((a) => a.id !== alert.id);
    if (alert.status !== "resolved") patient.open_alerts.push(alert);
  }
  return true;
}
{
  const table = document.querySelector("#list table");
  table.addEventListener("pointerenter", () => { pointerIn = true; });
  table.addEventListener("pointerleave", () => { pointerIn = false; scheduleRender(); });
  table.addEventListener("pointerdown", () => { pressed = true; });
  window.addEventListener("pointerup", () => { pressed = false; scheduleRender(); });
  $("rows").addEventListener("focusout", () => setTimeout(scheduleRender, 0));
}

// ---- the patient panel: the bundle ----
const VITALS = [["hr", "HR", "/min", [51, 90]], ["rr", "RR", "/min", [12, 20]], ["spo2", "SpO2", "%", [96, 100]], ["sbp", "SBP", "mmHg", [111, 219]],
  ["map", "MAP", "mmHg", [65, 110]], ["temp", "Temp", "°C", [36.1, 38.0]], ["gcs", "GCS", "", [15, 15]]];
// `wanted`: the patient the user asked to open. Asked while the connection is down, or lost
// with a connection that closed before the summary came, it is asked again on reconnecting:
// a click on a tile is never silently dropped. A summary for any other patient (one asked
// for before, arriving late) does not open the panel.
let patient = null, openedFrom = null, wanted = null;
function openPatient(id, from) {
  openedFrom = from || document.activeElement;
  wanted = id;
  if (!send({ type: "watch", patient: id }, "Not connected: the patient opens when the connection is back")) return;
  for (const a of alerts.values()) if (a.patient.id === id && a.status !== "resolved") receipt(a, "opened");
}
function closePatient() {
  patient = null; wanted = null; $("patient").hidden = true;
  if (ws && ws.readyState === 1) ws.send(JSON.stringify({ type: "unwatch" }));
  if (openedFrom && document.contains(openedFrom)) openedFrom.focus();
  else { const t = document.querySelector(".tile"); if (t) t.focus(); }
  openedFrom = null;
}
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && patient) { e.preventDefault(); closePatient(); } });
function sparkline(points, range, unit) {
  const w = 420, h = 74, ns = "http://www.w3.org/2000/svg", L = 34, R = 56, T = 6, B = 16;
  const svg = document.createElementNS(ns, "svg"); svg.setAttribute("viewBox", "0 0 " + w + " " + h); svg.setAttribute("role", "img");
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(...ys, range[0]), y1 = Math.max(...ys, range[1]);
  if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
  const sx = (x) => L + (w - L - R) * (x - x0) / Math.max(1, x1 - x0), sy = (y) => h - B - (h - T - B) * (y - y0) / (y1 - y0);
  const mk = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; svg.append(e); return e; };
  mk("rect", { class: "range", x: L, y: sy(range[1]), width: w - L - R, height: Math.max(1, sy(range[0]) - sy(range[1])) });
  mk("text", { x: 2, y: T + 8 }, String(Math.round(y1 * 10) / 10));
  mk("text", { x: 2, y: h - B }, String(Math.round(y0 * 10) / 10));
  mk("text", { x: L, y: h - 3 }, new Date(x0 * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  mk("text", { x: w - R - 30, y: h - 3 }, new Date(x1 * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  mk("polyline", { class: "line", points: points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ") });
  const last = points[points.length - 1], bad = last[1] < range[0] || last[1] > range[1];
  mk("circle", { class: "last" + (bad ? " abnormal" : ""), cx: sx(last[0]), cy: sy(last[1]), r: 3.5 });
  mk("text", { class: "latest" + (bad ? " abnormal" : ""), x: w - R + 6, y: Math.min(h - B, Math.max(T + 10, sy(last[1]) + 4)) }, String(Math.round(last[1] * 10) / 10) + (bad ? " !" : ""));
  svg.setAttribute("aria-label", "latest " + last[1] + " " + unit + (bad ? ", outside the normal range " : ", normal range ") + range[0] + " to " + range[1]);
  return svg;
}
function renderPatient() {
  if (!patient) return;
  const p = patient; const wasHidden = $("patient").hidden; $("patient").hidden = false;
  $("p-name").textContent = p.name || p.mrn;
  $("p-meta").textContent = [place(p.location), p.age_years !== null ? p.age_years + " y" : "", p.sex, "MRN " + p.mrn].filter(Boolean).join(" · ");
  renderPatientAlerts();
  const tiles = $("p-latest"); tiles.replaceChildren();
  for (const [name, label, unit, range] of VITALS.concat([["consciousness", "ACVPU", "", null], ["lactate", "Lactate", "mmol/L", [0.5, 2.0]]])) {
    const v = p.latest[name]; if (!v) continue;
    const bad = range && v.value !== null && (v.value < range[0] || v.value > range[1]);
    const d = el("div", "vt" + (bad ? " abnormal" : "")); d.dataset.vital = name;
    const b = el("b", "", v.value !== null ? String(Math.round(v.value * 10) / 10) : v.text);
    d.append(label + " " + unit, b, ago(v.at));
    if (bad) d.append(" ", el("span", "flag", "ABNORMAL"));
    tiles.append(d);
  }
  const trends = $("p-trends"); trends.replaceChildren();
  for (const [name, label, unit, range] of VITALS) {
    const pts = p.trends[name]; if (!pts || pts.length < 2) continue;
    const row = el("div", "trend"); row.dataset.vital = name;
    row.append(el("span", "", label + (unit ? " (" + unit + ")" : "")), sparkline(pts, range, unit)); trends.append(row);
  }
  const nAlert = p.open_alerts.find((a) => a.rule.id === "news2");
  const n = nAlert ? nAlert.details : (p.scores || {}).news2;
  const box = $("p-news2"); box.replaceChildren();
  if (n && n.subscores) {
    box.append("Score " + n.score + " · " + n.band + (n.partial ? " · partial (missing " + n.missing.join(", ") + ")" : ""));
    const t = el("table", "breakdown");
    for (const [k, v] of Object.entries(n.subscores)) { const tr = el("tr"); tr.append(cell(k), cell(String(v))); t.append(tr); }
    if (n.response) { const tr = el("tr"); tr.append(cell("response"), cell(n.response)); t.append(tr); }
    box.append(t);
  } else if (n && n.applies === false) box.textContent = "not scored: " + n.reason;
  else box.textContent = "not enough recent values";
  const notScored = Object.entries(p.scores || {}).filter(([, d]) => d && d.applies === false);
  const na = $("p-not-scored");
  na.hidden = !notScored.length;
  na.textContent = notScored.length ? "Not scored for this patient: " + notScored.map(([id, d]) => id + " (" + d.reason + ")").join("; ") : "";
  $("p-meds").textContent = p.medications.map((m) => m.name).join(", ") || "none recorded";
  $("p-allergies").textContent = p.allergies.map((a) => a.name).join(", ") || "none recorded";
  if (wasHidden) $("p-name").focus();
}
// Cards are rebuilt only when what they show changed, so a frame never takes focus from a
// button or a half-typed comment.
const cardKeys = new Map();
function renderPatientAlerts() {
  if (!patient) return;
  const list = patient.open_alerts.map((a) => alerts.get(a.id) || a).filter((a) => a.status !== "resolved")
    .sort((x, y) => (RANK[y.severity] - RANK[x.severity]) || (Date.parse(x.raised_at) - Date.parse(y.raised_at)));
  const box = $("p-alerts");
  const unacked = list.filter((a) => a.status === "active" && !acking.has(a.id));
  const all = $("p-ack-all");
  all.hidden = unacked.length === 0;
  setText(all, "Acknowledge all " + unacked.length);
  setText($("p-bundle-note"), list.length ? list.length + " open alert" + (list.length > 1 ? "s" : "") + ", most severe first" : "no open alerts");
  const ids = list.map((a) => a.id).join(" ");
  if (box.dataset.ids !== ids) {
    box.dataset.ids = ids;
    for (const c of [...box.children]) if (!list.some((a) => a.id === c.dataset.alertId)) { c.remove(); cardKeys.delete(c.dataset.alertId); }
  }
  list.forEach((a, i) => {
    const key = JSON.stringify([a.updated_at, a.status, acking.has(a.id), routes.get(a.id), silenceOf(a) && silenceOf(a).id, Math.floor(Date.now() / 30000)]);
    let card = box.querySelector(`.alert-card[data-alert-id="${CSS.escape(a.id)}"]`);
    const focused = card && card.contains(document.activeElement) ? document.activeElement : null;
    // Someone typing in this card keeps it as it is (but for its state and button); a focused
    // button is found again in the rebuilt card.
    const typing = focused && focused.tagName === "INPUT";
    if (!card || (cardKeys.get(a.id) !== key && !typing)) {
      const fresh = alertCard(a);
      if (card) card.replaceWith(fresh); else box.append(fresh);
      if (focused && focused.dataset.k) { const again = fresh.querySelector(`[data-k="${focused.dataset.k}"]`); if (again) again.focus(); }
      card = fresh; cardKeys.set(a.id, key);
    } else if (typing && cardKeys.get(a.id) !== key) {
      const b = card.querySelector("button.ack");
      const can = a.status === "active" && !acking.has(a.id);
      setText(b, can ? "Acknowledge" : acking.has(a.id) ? "Acknowledging…" : "Acknowledged"); b.setAttribute("aria-disabled", String(!can));
      setText(card.querySelector(".state"), stateText(a));
    }
    if (box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
  });
  renderSilenceBox(list);
}
function stateText(a) {
  return a.status === "acknowledged" && a.acknowledged ? "Acknowledged by " + a.acknowledged.by + " at " + clock(a.acknowledged.at) + " (" + ago(a.acknowledged.at) + ")" : "Not acknowledged";
}
function alertCard(a) {
  const c = el("div", "alert-card " + a.severity); c.dataset.alertId = a.id; c.dataset.rule = a.rule.id;
  const h = el("div", "h"); h.append(sevBadge(a.severity), el("b", "", title(a)));
  if (a.score !== null) h.append(el("span", "", "score " + a.score));
  if (a.stale) h.append(el("span", "muted", "stale: data missing at last evaluation"));
  c.append(h, el("div", "", a.summary + (a.finding ? " · " + a.finding : "")));
  const since = sevSince(a);
  c.append(el("div", "line", SEV_TEXT[a.severity] + " since " + ago(since) + " (" + clock(since) + ") · raised " + clock(a.raised_at) + (a.reopened ? " · reopened " + a.reopened + "×" : "")));
  c.append(el("div", "line state", stateText(a)));
  const r = routes.get(a.id);
  if (r) {
    const chain = (r.chain || []).map((s, i) => (s === r.current && (a.escalation ? a.escalation.level : 0) === i ? "[" + s + "]" : s)).join(" → ");
    c.append(el("div", "line chain", "Chain: " + chain));
    const esc = escLine(a, r, false);
    if (esc) c.append(el("div", "line esc", esc[0].toUpperCase() + esc.slice(1)));
    if (r.receipts && r.receipts.length) {
      c.append(el("div", "line receipts", r.receipts.map((x) => (x.kind === "opened" ? "opened by " : "shown to ") + x.user + " " + clock(x.at)).join(" · ")));
    }
  }
  const s = silenceOf(a);
  if (s) c.append(el("div", "line", "Silenced until " + clock(s.until) + " by " + s.by + ": " + reasonText(s.reason)));
  if (a.comments && a.comments.length) {
    const ul = el("ul", "comments");
    for (const m of a.comments) ul.append(el("li", "", m.by + " " + clock(m.at) + ": " + m.text));
    c.append(ul);
  }
  const acts = el("div", "acts");
  const can = a.status === "active" && !acking.has(a.id);
  const b = el("button", "act ack", can ? "Acknowledge" : acking.has(a.id) ? "Acknowledging…" : "Acknowledged"); b.type = "button";
  b.setAttribute("aria-disabled", String(!can)); b.dataset.k = "ack";
  b.setAttribute("aria-label", (can ? "Acknowledge " : "Acknowledged: ") + title(a));
  b.onclick = () => ack(alerts.get(a.id) || a);
  const sil = el("button", "act", "Silence this alert 15 min"); sil.type = "button"; sil.dataset.k = "silence";
  sil.onclick = () => command("silence", null, { patient: a.patient.id, alert_id: a.id, minutes: 15, reason: $("p-sil-reason") ? $("p-sil-reason").value : "clinician_at_bedside" });
  acts.append(b, sil);
  const note = el("input"); note.type = "text"; note.maxLength = 4000; note.placeholder = "Add a comment"; note.setAttribute("aria-label", "comment on " + title(a));
  const addNote = el("button", "act", "Comment"); addNote.type = "button"; addNote.dataset.k = "comment";
  addNote.onclick = () => { const t = note.value.trim(); if (t) { command("comment", a.id, { text: t }); note.value = ""; } };
  note.addEventListener("keydown", (e) => { if (e.key === "Enter") addNote.click(); });
  const why = el("select"); why.setAttribute("aria-label", "resolve reason for " + title(a)); why.dataset.k = "why";
  for (const r0 of RESOLVE_REASONS) { const o = el("option", "", r0); o.value = r0; why.append(o); }
  const free = el("input"); free.type = "text"; free.maxLength = 500; free.placeholder = "details (optional)"; free.setAttribute("aria-label", "resolve details");
  const res = el("button", "act resolve", "Resolve"); res.type = "button"; res.dataset.k = "resolve";
  res.onclick = () => { const reason = why.value + (free.value.trim() ? ": " + free.value.trim() : ""); command("resolve", a.id, { reason }); };
  acts.append(note, addNote, why, free, res);
  c.append(acts);
  return c;
}
function renderSilenceBox(list) {
  const box = $("p-silence");
  const s = patient && patientSilence(patient.id);
  const key = s ? s.id : list.length ? "form" : "none";
  if (box.dataset.key === key) {
    const left = box.querySelector(".left"); if (left && s) setText(left, until(s.until) + " left");
    return;
  }
  box.dataset.key = key; box.replaceChildren();
  if (s) {
    const d = el("div", "silenced");
    d.append("Notifications silenced by " + s.by + " at " + clock(s.at) + " (" + reasonText(s.reason) + ") until " + clock(s.until) + " · ", el("span", "left", until(s.until) + " left"), " ");
    const end = el("button", "act", "End silence"); end.type = "button"; end.onclick = () => command("end_silence", null, { silence_id: s.id });
    d.append(end); box.append(d);
  } else if (list.length) {
    const f = el("div", "silence-box");
    const mins = el("select"); mins.id = "p-sil-minutes"; mins.setAttribute("aria-label", "silence for");
    for (const m of SILENCE_MINUTES) { const o = el("option", "", m + " min"); o.value = String(m); if (m === 15) o.selected = true; mins.append(o); }
    const why = el("select"); why.id = "p-sil-reason"; why.setAttribute("aria-label", "silence reason");
    for (const [c0, t] of SILENCE_REASONS) { const o = el("option", "", t); o.value = c0; why.append(o); }
    const go = el("button", "act", "Silence patient"); go.id = "p-silence-go"; go.type = "button";
    go.onclick = () => command("silence", null, { patient: patient.id, minutes: Number(mins.value), reason: why.value });
    f.append("Silence notifications for", mins, why, go); box.append(f);
  }
}
$("p-ack-all").onclick = () => {
  if (!patient) return;
  for (const a0 of patient.open_alerts) { const a = alerts.get(a0.id) || a0; ack(a); }
  renderPatientAlerts();
};
function onVitals(f) {
  if (!patient || f.patient !== patient.id) return;
  for (const o of f.observations) {
    patient.latest[o.name] = { value: o.value, text: o.text || null, at: o.observed_at };
    if (o.value !== null) (patient.trends[o.name] = patient.trends[o.name] || []).push([Math.floor(Date.parse(o.observed_at) / 1000), o.value]);
  }
  renderPatient();
}
// ---- assignments (charge nurse, admin) ----
function showAssign() {
  const may = me.role === "charge" || me.role === "admin";
  $("assign-open").hidden = !may;
  if (!may) { $("assign").hidden = true; return; }
  const sel = $("as-unit"), cur = sel.value;
  sel.replaceChildren();
  for (const u of myUnits.filter((u) => u !== "*").concat(knownUnits ? knownUnits.split("|") : []).filter((u, i, all) => all.indexOf(u) === i)) {
    const o = el("option", "", u); o.value = u; sel.append(o);
  }
  if (cur) sel.value = cur;
  const list = $("as-list"); list.replaceChildren();
  for (const a of assignments) list.append(el("li", "", a.nurse + ": " + a.unit + " " + a.beds.join(", ") + " until " + clock(a.until) + " (by " + a.by + ")"));
}
$("assign-open").onclick = () => {
  const open = $("assign").hidden; $("assign").hidden = !open; $("assign-open").setAttribute("aria-expanded", String(open));
  if (open) { showAssign(); $("as-nurse").focus(); }
};
$("as-go").onclick = () => {
  const beds = $("as-beds").value.split(/[\s,]+/).filter(Boolean);
  const nurse = $("as-nurse").value.trim();
  if (!nurse) { toast("Name the nurse (user id) to assign"); return; }
  command("assign", null, { nurse, unit: $("as-unit").value, beds, hours: Number($("as-hours").value) });
};
// ---- connection ----
function setLive(up) {
  live = up;
  if (up) { everLive = true; backoff = 500; }
  document.body.classList.toggle("stale", !up && everLive);
  const banner = $("banner");
  if (up || !everLive) banner.hidden = true;
  else {
    banner.hidden = false;
    const when = lastUpdate ? " (last update " + lastUpdate.toLocaleTimeString() + ")" : "";
    setText(banner, "Connection lost: the alerts below may be out of date" + when + ". Reconnecting…");
  }
  $("conn").textContent = up ? "live" : everLive ? "reconnecting…" : "connecting…"; $("conn").className = up ? "up" : "down";
  scheduleRender();
}
function signInError(message) {
  signedOut = true;
  sessionStorage.removeItem("vigil.token");
  if (ws) { ws.onclose = null; ws = null; }
  clearTimeout(reconnectTimer);
  live = false; alerts.clear(); for (const r of rowsById.values()) r.tr.remove(); rowsById.clear();
  for (const t of tilesById.values()) t.t.remove(); tilesById.clear();
  $("board").hidden = true; $("banner").hidden = true; document.body.classList.remove("stale");
  $("signin").hidden = false;
  const e = $("signin-error"); e.hidden = false;
  e.textContent = "Sign-in failed: " + message + ". Paste a new console token to see alerts.";
  $("conn").textContent = "signed out"; $("conn").className = "down";
  document.title = "Sign in · Vigil";
}
async function whyRefused(t) {
  try {
    const res = await fetch("/api/alerts/-", { headers: { Authorization: "Bearer " + t }, cache: "no-store" });
    if (res.status === 401) {
      let reason = "the token was refused";
      try { const body = await res.json(); if (body && (body.reason || body.error)) reason = body.reason || body.error; } catch (e) { /* not JSON */ }
      return reason;
    }
  } catch (e) { /* server unreachable: keep retrying */ }
  return null;
}
function reconnectLater() {
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 10000);
}
function onFrame(f) {
  lastUpdate = new Date();
  if (f.type === "snapshot") {
    alerts.clear(); routes.clear();
    for (const a of f.alerts) apply(a, (f.routes || {})[a.id]);
    lastSeq = f.seq;
  } else if (f.type === "alert") {
    if (apply(f.alert, f.route) && f.notify) notify(f.alert);
    lastSeq = f.seq;
  } else if (f.type === "subscribed") {
    $("units").textContent = f.units.join(", ");
    me = { user: f.user, role: f.role }; myUnits = f.units; ruleTitles = f.rule_titles || {}; assignments = f.assignments || [];
    setLive(true);
    showAssign();
  } else if (f.type === "silences") {
    silences.clear(); for (const s of f.silences) silences.set(s.id, s);
  } else if (f.type === "silence") {
    if (f.silence.ended) silences.delete(f.silence.id); else silences.set(f.silence.id, f.silence);
  } else if (f.type === "census") {
    census.clear(); for (const c of f.beds) census.set(c.patient, c); censusTruncated = f.truncated;
  } else if (f.type === "bed") {
    census.set(f.bed.patient, f.bed);
  } else if (f.type === "bed_left") {
    census.delete(f.patient);
  } else if (f.type === "receipts") {
    const r = routes.get(f.alert_id); if (r) r.receipts = f.receipts;
  } else if (f.type === "reply") {
    const p = pending.get(f.ref); pending.delete(f.ref);
    if (p && p.type === "ack") acking.delete(p.alertId);
    if (!f.ok) toast(f.error);
    else if (f.alert) apply(f.alert);
    else if (f.silence) { if (f.silence.ended) silences.delete(f.silence.id); else silences.set(f.silence.id, f.silence); }
    else if (f.assignment) {
      assignments = assignments.filter((x) => !(x.unit === f.assignment.unit && x.nurse === f.assignment.nurse));
      if (f.assignment.beds.length) assignments.push(f.assignment);
      showAssign();
    }
  } else if (f.type === "error") { toast(f.message); }
  else if (f.type === "patient") { if (f.summary.id !== wanted) return; patient = f.summary; for (const a of patient.open_alerts) if (!alerts.has(a.id)) apply(a); renderPatient(); }
  else if (f.type === "vitals") { onVitals(f); }
  scheduleRender();
}
function connect() {
  const t = token();
  signedOut = !t;
  if (!t) { $("signin").hidden = false; $("board").hidden = true; document.title = "Sign in · Vigil"; return; }
  $("signin").hidden = true; $("signin-error").hidden = true; $("board").hidden = false;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(t)}`);
  let opened = false;
  ws = sock;
  sock.onopen = () => {
    opened = true;
    const sub = { type: "subscribe", units: [] };
    if (lastSeq !== null) sub.since = lastSeq;
    sock.send(JSON.stringify(sub));
    const again = patient ? patient.id : wanted;
    if (again) sock.send(JSON.stringify({ type: "watch", patient: again }));
  };
  sock.onmessage = (ev) => onFrame(JSON.parse(ev.data));
  sock.onclose = async () => {
    if (ws !== sock) return;
    // Commands in flight on a closed socket get no reply: the alert's state after the
    // reconnect says whether they took effect.
    pending.clear(); acking.clear();
    setLive(false);
    if (!opened) {
      const reason = await whyRefused(t);
      if (reason) { signInError(reason); return; }
    }
    reconnectLater();
  };
}
$("go").onclick = () => { sessionStorage.setItem("vigil.token", $("tok").value.trim()); backoff = 500; connect(); };
$("p-close").onclick = closePatient;
$("view-board").onclick = () => setView("board");
$("view-list").onclick = () => setView("list");
for (const id of ["f-unit", "f-sev", "f-status"]) $(id).addEventListener("change", render);
$("mute").onclick = () => {
  const ctx = audioContext(); if (ctx && ctx.state !== "running") ctx.resume().then(showSoundState, showSoundState);
  localStorage.setItem("vigil.muteUntil", mutedNow() ? "0" : String(shiftEnd(Date.now())));
  showMute();
};
$("sound-unblock").onclick = () => { const ctx = audioContext(); if (ctx) ctx.resume().then(showSoundState, showSoundState); };
$("notify-perm").onclick = () => { Notification.requestPermission().then(showNotifyPerm, showNotifyPerm); };
$("notify-min").onchange = (e) => { localStorage.setItem("vigil.notifyMin", e.target.value); };
// Any click or key is a user gesture that may unblock the one audio context.
for (const ev of ["pointerdown", "keydown"]) document.addEventListener(ev, () => { if (audio && audio.state !== "running") audio.resume().then(showSoundState, showSoundState); }, true);
audioContext(); showSoundState(); showMute(); showNotifyPerm();
setInterval(() => { showMute(); render(); }, 5000);
setView(view);
connect();
