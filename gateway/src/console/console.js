// The governance console: plain JavaScript, no framework, no network but this gateway.
// Everything shown from the server goes in as text (textContent), never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem('gateway-token') || '', who: null, versions: [], active: 0, files: [], file: 0, base: 0 };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function say(text, error) {
  const s = $('status');
  s.textContent = text;
  s.className = error ? 'error' : '';
}

// Calls the gateway; an error answer (a FHIR OperationOutcome) becomes an Error with its words.
async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + state.token, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    const words = data && data.issue ? data.issue.map((i) => i.diagnostics).filter(Boolean).join(' · ') : r.statusText;
    const e = new Error(words || ('HTTP ' + r.status));
    e.status = r.status;
    throw e;
  }
  return data;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

// ---- sign in and pages

async function signIn(token) {
  state.token = token.trim();
  try {
    state.who = await api('GET', '/admin/api/whoami');
  } catch (e) {
    state.token = '';
    sessionStorage.removeItem('gateway-token');
    say('Sign-in refused: ' + e.message, true);
    return false;
  }
  sessionStorage.setItem('gateway-token', state.token);
  const w = state.who;
  $('who').textContent = `Signed in as ${w.user} (${w.role}, ${w.organisation}) at ${w.region.name}`;
  $('nav').hidden = false;
  if (!w.may['edit-policy'] && !w.may['read-audit']) say('Your role may not use the governance console.', true);
  else say('');
  return true;
}

function signOut() {
  state.token = '';
  state.who = null;
  sessionStorage.removeItem('gateway-token');
  $('nav').hidden = true;
  $('who').textContent = 'Not signed in';
  location.hash = '#signin';
  show();
}

const loaders = {
  policies: loadPolicies, diff: loadDiff, simulate: loadSimulator, history: loadHistory,
  audit: () => {}, review: loadReview, consent: () => {},
};

async function show() {
  let page = location.hash.replace('#', '') || 'policies';
  if (!state.who) page = 'signin';
  for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== 'page-' + page;
  if (!$('page-' + page)) { $('page-signin').hidden = false; return; }
  document.title = $('page-' + page).querySelector('h2').textContent + ': governance console';
  if (loaders[page]) {
    try { await loaders[page](); } catch (e) { say(e.message, true); }
  }
}

// ---- versions

async function refreshVersions() {
  const list = await api('GET', '/admin/api/policies');
  state.versions = list.versions;
  state.active = list.active;
  state.activations = list.activations;
  const label = (v) => `${v.id}${v.active ? ' (active)' : ''}: ${v.comment}`;
  for (const [id, filter, none] of [['base-version', () => true, null], ['diff-version', (v) => !v.active, null], ['sim-draft', (v) => !v.active, 'No draft: the active version only']]) {
    const sel = $(id);
    const keep = sel.value;
    clear(sel);
    if (none) sel.append(el('option', { value: '' }, none));
    for (const v of state.versions.filter(filter)) sel.append(el('option', { value: v.id }, label(v)));
    if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  }
  return list;
}

// ---- policies: the editor

let checkTimer = null;
let lastProblems = [];

async function loadPolicies() {
  await refreshVersions();
  if (!state.files.length) await startFrom(state.active);
}

async function startFrom(id) {
  const v = await api('GET', '/admin/api/policies/' + id);
  state.base = v.id;
  state.files = v.files.map((f) => ({ name: f.name, text: f.text }));
  state.file = 0;
  $('base-version').value = String(v.id);
  const sel = clear($('file-select'));
  state.files.forEach((f, i) => sel.append(el('option', { value: i }, f.name)));
  openFile(0);
  scheduleCheck(0);
}

function openFile(i) {
  state.file = i;
  $('file-select').value = String(i);
  $('source').value = state.files[i].text;
  drawGutter();
}

function drawGutter() {
  const lines = $('source').value.split('\n').length;
  const name = state.files[state.file] && state.files[state.file].name;
  const bad = new Set(lastProblems.filter((p) => p.file === name).map((p) => p.line));
  const g = clear($('gutter'));
  for (let n = 1; n <= lines; n++) {
    g.append(bad.has(n) ? el('span', { class: 'bad', title: 'problem on this line' }, '⚠ ' + n) : String(n));
    g.append('\n');
  }
  g.scrollTop = $('source').scrollTop;
}

function scheduleCheck(delay) {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(runCheck, delay);
}

async function runCheck() {
  const summary = $('check-summary');
  summary.textContent = 'Checking…';
  let r;
  try {
    r = await api('POST', '/admin/api/policies/check', { files: state.files });
  } catch (e) { summary.textContent = 'Could not check: ' + e.message; return; }
  lastProblems = r.problems;
  const probs = clear($('problems'));
  for (const p of r.problems) {
    probs.append(el('li', {}, el('button', { type: 'button', class: 'link', onclick: () => jumpTo(p) }, `${p.file}, line ${p.line}, column ${p.column}`), ': ' + p.message));
  }
  const fails = clear($('case-failures'));
  for (const c of r.cases.failures) fails.append(el('li', {}, `Test case “${c.name}” (${c.file}) fails: ${c.detail}`));
  const changed = r.diff.files.length;
  summary.textContent = r.problems.length
    ? `${r.problems.length} problem(s): fix them before this can be activated.`
    : `Valid. Test cases: ${r.cases.passed} pass, ${r.cases.failed} fail. ${changed} file(s) differ from the active version ${r.diff.against}.`;
  summary.className = r.activatable ? 'ok' : 'bad-text';
  drawGutter();
}

function jumpTo(p) {
  const i = state.files.findIndex((f) => f.name === p.file);
  if (i < 0) return;
  openFile(i);
  const src = $('source');
  const lines = src.value.split('\n');
  let offset = 0;
  for (let n = 1; n < p.line && n <= lines.length; n++) offset += lines[n - 1].length + 1;
  offset += Math.max(0, p.column - 1);
  src.focus();
  src.setSelectionRange(offset, offset);
  src.scrollTop = Math.max(0, (p.line - 5) * 20);
  drawGutter();
}

async function saveDraft(ev) {
  ev.preventDefault();
  try {
    const r = await api('POST', '/admin/api/policies', { files: state.files, based_on: state.base, comment: $('comment').value });
    await refreshVersions();
    $('diff-version').value = String(r.id);
    $('sim-draft').value = String(r.id);
    say(`Saved as draft version ${r.id}. ${r.activatable ? 'It passes its checks: simulate it, then activate it from the version history.' : 'It does not pass its checks yet, so it cannot be activated.'}`);
  } catch (e) { say('Not saved: ' + e.message, true); }
}

// ---- diff

async function loadDiff() {
  await refreshVersions();
  if ($('diff-version').value) await showDiff();
}

async function showDiff() {
  const id = $('diff-version').value;
  // Fetch first, then draw: two quick calls must not both draw.
  const d = id ? await api('GET', `/admin/api/policies/${id}/diff`) : null;
  const out = clear($('diff-out'));
  if (!d) { out.append(el('p', {}, 'There is no other version to compare.')); return; }
  out.append(el('p', {}, `Version ${d.version} against the active version ${d.against}: ${d.files.length} file(s) differ.`));
  for (const f of d.files) {
    out.append(el('h3', {}, `${f.name} (${f.change}: +${f.added_lines} −${f.removed_lines})`));
    const pre = el('pre', { class: 'diff', tabindex: 0, 'aria-label': 'differences in ' + f.name });
    for (const line of f.unified.split('\n')) {
      const cls = line.startsWith('+') && !line.startsWith('+++') ? 'add' : line.startsWith('-') && !line.startsWith('---') ? 'del' : '';
      pre.append(cls ? el('span', { class: cls }, line) : line + '\n');
    }
    out.append(pre);
  }
}

// ---- simulator

async function loadSimulator() {
  await refreshVersions();
  if (!$('sim-region').value && state.who) $('sim-region').value = state.who.region.code;
}

function decisionBlock(title, d) {
  const cls = d.allowed ? 'allowed' : 'withheld';
  return el('div', { class: 'decision ' + cls },
    el('h4', {}, `${title}: ${d.allowed ? 'released' : 'withheld'}`),
    d.because.length ? el('ul', {}, d.because.map((b) => el('li', {}, el('strong', {}, b.id), ` (${b.file}): ${b.comment}`)))
      : el('p', {}, d.allowed ? '' : 'No rule permits it.'),
    d.errors.length ? el('p', { class: 'bad-text' }, 'Errors: ' + d.errors.join('; ')) : null);
}

async function simulate(ev) {
  ev.preventDefault();
  const out = clear($('sim-out'));
  const body = {
    user: { role: $('sim-role').value, organisation: $('sim-org').value },
    purpose_of_use: $('sim-purpose').value,
    break_glass_reason: $('sim-bg').value,
  };
  if ($('sim-draft').value) body.version = Number($('sim-draft').value);
  if ($('sim-mode-item').checked) {
    body.resource_type = $('sim-type').value;
    body.item = {
      region: $('sim-region').value, confidentiality: $('sim-conf').value,
      sensitivity: $('sim-sens').value.split(/\s+/).filter(Boolean),
      patient_home_region: $('sim-region').value,
      patient_objects_to_sharing: $('sim-objects').checked, consent_denies: $('sim-denies').checked, consent_permits: $('sim-permits').checked,
    };
  } else {
    body.patient = $('sim-patient').value.replace(/\s/g, '');
  }
  let r;
  try { r = await api('POST', '/admin/api/policies/simulate', body); } catch (e) { say('Simulation refused: ' + e.message, true); return; }
  say('');
  if (r.item) {
    out.append(decisionBlock(`Active version ${r.active}`, r.item.active));
    if (r.item.draft) {
      out.append(decisionBlock(`Draft version ${r.draft}`, r.item.draft));
      out.append(el('p', { class: r.item.changed ? 'bad-text' : 'ok', id: 'sim-summary' }, r.item.changed ? 'The draft changes this decision.' : 'The draft decides the same.'));
    }
  } else {
    const rec = r.record;
    out.append(el('p', { id: 'sim-summary', class: rec.changes.length ? 'bad-text' : 'ok' }, rec.summary));
    out.append(el('p', {}, `${rec.items} item(s) held for the patient in this region; the active version ${r.active} releases ${rec.released_active}` +
      (rec.released_draft === null || rec.released_draft === undefined ? '.' : `; draft ${r.draft} would release ${rec.released_draft}.`)));
    if (rec.changes.length) {
      out.append(el('table', {}, el('caption', {}, 'What the draft changes'),
        el('thead', {}, el('tr', {}, ['Type', 'Now', 'With the draft', 'Items'].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, rec.changes.map((c) => el('tr', {}, el('td', {}, c.resource_type), el('td', {}, c.from), el('td', {}, c.to), el('td', {}, c.count))))));
    }
  }
}

// ---- history, activation and rollback

let activating = null;

async function loadHistory() {
  await refreshVersions();
  const tb = clear($('versions').querySelector('tbody'));
  for (const v of state.versions) {
    const action = v.active ? el('span', { class: 'badge' }, 'Active')
      : el('button', { type: 'button', onclick: () => askActivation(v) }, v.id < state.active ? `Roll back to version ${v.id}` : `Activate version ${v.id}`);
    tb.append(el('tr', {}, el('td', {}, v.id), el('td', {}, v.created_at), el('td', {}, v.author), el('td', {}, v.comment), el('td', {}, v.origin), el('td', {}, v.active ? 'active' : ''), el('td', {}, action)));
  }
  const ta = clear($('activations').querySelector('tbody'));
  for (const a of state.activations) ta.append(el('tr', {}, el('td', {}, a.activated_at), el('td', {}, a.version), el('td', {}, a.activated_by), el('td', {}, a.reason)));
}

function askActivation(v) {
  activating = v.id;
  $('activate-h').textContent = (v.id < state.active ? 'Roll back to version ' : 'Activate version ') + v.id;
  $('activate-go').textContent = v.id < state.active ? 'Roll back' : 'Activate';
  $('activate-form').hidden = false;
  $('activate-reason').focus();
}

async function activate(ev) {
  ev.preventDefault();
  try {
    const r = await api('POST', `/admin/api/policies/${activating}/activate`, { reason: $('activate-reason').value });
    say(`Version ${r.activation.version} is now active (${r.policies} rules); it was ${r.previous}.`);
    $('activate-form').hidden = true;
    $('activate-reason').value = '';
    state.files = [];
    await loadHistory();
  } catch (e) { say('Not activated: ' + e.message, true); }
}

// ---- audit search

function detailOf(ev, type) {
  for (const ent of ev.entity || []) for (const d of ent.detail || []) if (d.type === type) return d.valueString;
  return '';
}

async function auditSearch(ev) {
  ev.preventDefault();
  const q = new URLSearchParams();
  if ($('audit-patient').value) q.append('patient', $('audit-patient').value.replace(/\s/g, ''));
  if ($('audit-user').value) q.append('user', $('audit-user').value);
  if ($('audit-region').value) q.append('region', $('audit-region').value);
  if ($('audit-from').value) q.append('date', 'ge' + $('audit-from').value);
  if ($('audit-to').value) q.append('date', 'lt' + $('audit-to').value);
  if ($('audit-bg').checked) q.append('break-glass', 'true');
  const out = clear($('audit-out'));
  let b;
  try { b = await api('GET', '/admin/audit?' + q.toString()); } catch (e) { say('Search refused: ' + e.message, true); return; }
  say('');
  const rows = (b.entry || []).map((e) => e.resource);
  out.append(el('p', {}, `${b.total} record(s); the newest ${rows.length} shown.`));
  out.append(el('table', { id: 'audit-table' }, el('thead', {}, el('tr', {}, ['Record', 'When', 'What', 'User', 'Patient', 'Outcome', 'Released / withheld', 'Break-glass reason'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.map((r) => {
      const user = (r.agent || []).find((a) => a.requestor && a.who && a.who.identifier);
      const patient = (r.entity || []).find((e) => e.what && e.what.identifier);
      const kind = (r.entity || []).slice(-1)[0];
      return el('tr', {}, el('td', {}, r.id), el('td', {}, r.recorded), el('td', {}, kind ? kind.name : ''),
        el('td', {}, user ? user.who.identifier.value : ''), el('td', {}, patient ? patient.what.identifier.value : ''),
        el('td', {}, r.outcomeDesc || 'success'), el('td', {}, `${detailOf(r, 'released')} / ${detailOf(r, 'withheld')}`),
        el('td', {}, detailOf(r, 'break-glass-reason')));
    }))));
}

// ---- break-glass review

async function loadReview() {
  const r = await api('GET', '/admin/api/break-glass?reviewed=' + ($('review-all').checked ? 'any' : 'false'));
  const out = clear($('review-out'));
  if (!r.accesses.length) { out.append(el('p', { id: 'review-empty' }, 'No break-glass access is awaiting review.')); return; }
  out.append(el('table', { id: 'review-table' }, el('thead', {}, el('tr', {}, ['Record', 'When', 'User', 'Patient', 'Reason given', 'Review'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, r.accesses.map((a) => {
      let cell;
      if (a.review) {
        cell = el('td', {}, `Reviewed by ${a.review.reviewer} at ${a.review.reviewed_at}: ${a.review.note}`);
      } else {
        const id = 'note-' + a.seq;
        const input = el('input', { id, size: 30, required: true, minlength: 10 });
        cell = el('td', {}, el('label', { for: id }, 'Review note'), input,
          el('button', { type: 'button', onclick: async () => {
            try { await api('POST', `/admin/api/break-glass/${a.seq}/review`, { note: input.value }); say(`Access ${a.seq} marked reviewed.`); await loadReview(); } catch (e) { say('Not recorded: ' + e.message, true); }
          } }, `Mark ${a.seq} reviewed`));
      }
      return el('tr', {}, el('td', {}, a.seq), el('td', {}, a.time), el('td', {}, `${a.user} (${a.role}, ${a.organisation})`), el('td', {}, a.patient || ''), el('td', {}, a.reason || ''), cell);
    }))));
}

// ---- consent lookup

async function consentLookup(ev) {
  ev.preventDefault();
  const out = clear($('consent-out'));
  let r;
  try { r = await api('GET', '/admin/api/consent?patient=' + encodeURIComponent($('consent-patient').value.replace(/\s/g, ''))); } catch (e) { say('Lookup refused: ' + e.message, true); return; }
  say('');
  out.append(el('p', { id: 'consent-summary' }, r.objects_to_sharing ? 'The patient objects to sharing their record beyond their home region.' : 'The patient has not objected to sharing.'));
  if (!r.directives.length) { out.append(el('p', {}, 'No consent directives are held for this patient.')); return; }
  out.append(el('table', {}, el('thead', {}, el('tr', {}, ['Directive', 'Status', 'Provision', 'Held in', 'Recorded'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, r.directives.map((d) => {
      const c = d.resource || {};
      return el('tr', {}, el('td', {}, c.id || ''), el('td', {}, c.status || ''), el('td', {}, (c.provision && c.provision.type) || ''),
        el('td', {}, d.source), el('td', {}, d.recorded_by ? `${d.recorded_by} at ${d.recorded_at}` : ''));
    }))));
}

// ---- wiring

document.addEventListener('DOMContentLoaded', async () => {
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (await signIn($('token').value)) { $('token').value = ''; location.hash = '#policies'; show(); }
  });
  $('sign-out').addEventListener('click', signOut);
  $('base-version').addEventListener('change', () => startFrom($('base-version').value).catch((e) => say(e.message, true)));
  $('file-select').addEventListener('change', () => openFile(Number($('file-select').value)));
  $('source').addEventListener('input', () => { state.files[state.file].text = $('source').value; drawGutter(); scheduleCheck(500); });
  $('source').addEventListener('scroll', () => { $('gutter').scrollTop = $('source').scrollTop; });
  $('save-form').addEventListener('submit', saveDraft);
  $('diff-show').addEventListener('click', () => showDiff().catch((e) => say(e.message, true)));
  $('diff-version').addEventListener('change', () => showDiff().catch((e) => say(e.message, true)));
  $('sim-form').addEventListener('submit', simulate);
  for (const r of document.querySelectorAll('input[name="sim-mode"]')) {
    r.addEventListener('change', () => {
      $('sim-item-fields').hidden = !$('sim-mode-item').checked;
      $('sim-patient-fields').hidden = $('sim-mode-item').checked;
    });
  }
  $('activate-form').addEventListener('submit', activate);
  $('activate-cancel').addEventListener('click', () => { $('activate-form').hidden = true; });
  $('audit-form').addEventListener('submit', auditSearch);
  $('review-all').addEventListener('change', () => loadReview().catch((e) => say(e.message, true)));
  $('consent-form').addEventListener('submit', consentLookup);
  window.addEventListener('hashchange', show);
  if (state.token) await signIn(state.token);
  show();
});
