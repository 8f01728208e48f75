// The one view: sign-in (SMART App Launch, EHR or standalone, authorization code with PKCE),
// the record read from the gateway's own FHIR API, and the page drawn from it. The token and
// the record live in this module's memory only; the one thing kept across the sign-in's
// round trip to the identity provider is its state and PKCE verifier, in sessionStorage, and
// that is removed as soon as the page returns. Server text is always set as text, never as HTML.
import {
  SECTIONS, buildRecord, demographics, filterTimeline, formatNhsNumber, gather, parseNhsNumber,
  readableDate, typeName, typesPresent,
} from './model.js';

const $ = (id) => document.getElementById(id);
const SIGN_IN_KEY = 'one-view.sign-in';
const PAGE_SIZE = 1000; // the gateway's largest _count: fewest round trips for a long record
const TIMELINE_STEP = 100; // items drawn at a time: the DOM stays small for thousands of items
const SECTION_SHOWN = 10;

const session = { token: null, user: null, patient: null, launchPatient: null, glass: null, record: null, shown: TIMELINE_STEP };
let settings = { identity_provider: false };

// --- small DOM helpers ---------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function show(id) {
  for (const s of ['sign-in', 'search', 'record']) $(s).hidden = s !== id;
}

function status(message) { $('status').textContent = message; }

function fail(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
  if (message) status('');
}

const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const random = (n) => base64url(crypto.getRandomValues(new Uint8Array(n)));
const decodeLetter = (b64) => new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));

// --- the gateway's API ---------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/// GETs a path of this gateway's with the session's token; a FHIR error is thrown with the
/// diagnostics of its OperationOutcome.
async function api(path, headers = {}) {
  const h = { Accept: 'application/fhir+json', ...headers };
  if (session.token) h.Authorization = `Bearer ${session.token}`;
  const r = await fetch(path, { headers: h, credentials: 'omit', cache: 'no-store' });
  let body = null;
  try { body = await r.json(); } catch { body = null; }
  if (!r.ok) {
    const said = body && body.issue ? body.issue.map((i) => i.diagnostics).filter(Boolean).join(' ') : '';
    throw new ApiError(r.status, said || `The gateway answered ${r.status}.`);
  }
  return body;
}

/// A link of the gateway's as a path on this origin (the page talks to its own gateway only).
const samePath = (url) => { const u = new URL(url, location.href); return u.pathname + u.search; };

// --- signing in ----------------------------------------------------------------------------

async function startSignIn(launch, iss) {
  const own = `${location.origin}/fhir`;
  if (iss && iss.replace(/\/$/, '') !== own) {
    fail('This page opens records from its own gateway only, and it was launched for another server. Open the record again from your system.');
    show('sign-in');
    return;
  }
  status('Signing you in…');
  const smart = await api('/fhir/.well-known/smart-configuration');
  const verifier = random(32);
  const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const state = random(16);
  const redirect = `${location.origin}/view/`;
  sessionStorage.setItem(SIGN_IN_KEY, JSON.stringify({ state, verifier, token: smart.token_endpoint, redirect }));
  const q = new URLSearchParams({
    response_type: 'code',
    client_id: settings.client_id,
    redirect_uri: redirect,
    scope: launch ? settings.ehr_scope : settings.standalone_scope,
    state,
    aud: own,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  if (launch) q.set('launch', launch);
  location.assign(`${smart.authorization_endpoint}?${q}`);
}

async function finishSignIn(params) {
  const saved = JSON.parse(sessionStorage.getItem(SIGN_IN_KEY) || 'null');
  sessionStorage.removeItem(SIGN_IN_KEY);
  // The code and state leave the address bar and the history at once.
  history.replaceState(null, '', '/view/');
  if (params.get('error')) {
    throw new Error(`The sign-in was refused: ${params.get('error_description') || params.get('error')}.`);
  }
  if (!saved || saved.state !== params.get('state')) {
    throw new Error('The sign-in could not be completed (it did not start on this page). Sign in again.');
  }
  status('Signing you in…');
  const r = await fetch(saved.token, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: params.get('code'),
      redirect_uri: saved.redirect,
      client_id: settings.client_id,
      code_verifier: saved.verifier,
    }),
    credentials: 'omit',
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok || !body.access_token) {
    throw new Error(`The identity provider did not issue a token: ${body.error_description || body.error || r.status}.`);
  }
  return { token: body.access_token, patient: body.patient || null };
}

async function signedIn(token, patient) {
  session.token = token;
  session.launchPatient = patient ? String(patient).replace(/^Patient\//, '') : null;
  session.user = await api('/admin/api/whoami');
  fail('');
  const u = session.user;
  $('who').textContent = `Signed in as ${u.user} (role ${u.role}, organisation ${u.organisation})`;
  $('sign-out').hidden = false;
  if (session.launchPatient) await openRecord(session.launchPatient);
  else showSearch();
}

function signOut() {
  session.token = null; session.user = null; session.record = null; session.patient = null; session.glass = null;
  for (const id of ['sections', 'toc', 'regions', 'notices', 'tl-list', 'demographics']) $(id).replaceChildren();
  $('who').textContent = '';
  $('sign-out').hidden = true;
  fail('');
  status('You are signed out. The record was cleared from this page.');
  showSignIn();
}

function showSignIn() {
  show('sign-in');
  $('sign-in-go').hidden = !settings.identity_provider;
  $('token-form').hidden = settings.identity_provider;
}

function showSearch() {
  session.record = null;
  show('search');
  $('nhs').value = '';
  $('nhs').focus();
}

// --- the record ------------------------------------------------------------------------------

async function fetchRecord(nhs) {
  const headers = session.glass ? { 'X-Break-Glass-Reason': session.glass } : {};
  const pages = [];
  let next = `/fhir/Patient/${encodeURIComponent(nhs)}/$everything?_count=${PAGE_SIZE}`;
  while (next) {
    const page = await api(next, headers);
    pages.push(page);
    status(`Reading the record… ${pages.reduce((n, p) => n + (p.entry || []).length, 0)} entries so far`);
    const link = (page.link || []).find((l) => l.relation === 'next');
    next = link ? samePath(link.url) : null;
  }
  return gather(pages);
}

async function openRecord(nhs) {
  document.body.dataset.state = 'loading';
  fail('');
  status('Reading the record from every region…');
  let gathered;
  try {
    gathered = await fetchRecord(nhs);
  } catch (e) {
    if (e.status === 401) { session.token = null; status(''); fail('Your session has ended. Sign in again.'); showSignIn(); return; }
    fail(e.message);
    if (!session.launchPatient) showSearch();
    document.body.dataset.state = 'failed';
    return;
  }
  session.patient = nhs;
  session.record = buildRecord(gathered, decodeLetter);
  session.produced = new Date();
  drawRecord();
  status(`Record shown: ${session.record.items.length} items from ${session.record.answered.length} region(s).`);
  performance.mark('view-interactive');
  document.body.dataset.state = 'ready';
  $('patient-name').focus();
}

function drawRecord() {
  const rec = session.record;
  show('record');
  // The banner.
  const d = demographics(rec.patient) || { name: 'Name not known', nhs: session.patient, birthDate: '', sex: '', address: '' };
  $('patient-name').textContent = d.name || 'Name not known';
  const dl = $('demographics');
  dl.replaceChildren();
  for (const [k, v] of [['NHS number', formatNhsNumber(d.nhs || session.patient)], ['Born', d.birthDate ? readableDate(d.birthDate) : 'not recorded'], ['Sex', d.sex || 'not recorded'], ['Address', d.address || 'not recorded']]) {
    dl.append(el('div', {}, el('dt', { text: k }), el('dd', { text: v })));
  }
  const conflict = $('conflict');
  conflict.replaceChildren();
  conflict.hidden = rec.issues.conflict.length === 0;
  if (rec.issues.conflict.length) {
    conflict.append(el('h2', { text: 'Possible wrong patient: the regions disagree on who this is' }));
    const ul = el('ul');
    for (const c of rec.issues.conflict) ul.append(el('li', { text: c.text }));
    conflict.append(ul, el('p', { text: 'Confirm the patient\u2019s identity (name, date of birth, address) before acting on this record.' }));
  }
  const glass = $('glass-banner');
  glass.hidden = !session.glass;
  glass.textContent = session.glass
    ? `Emergency access (break glass): purpose of use is emergency treatment. Your reason, \u201c${session.glass}\u201d, is recorded and will be reviewed.`
    : '';
  $('break-glass').hidden = !!session.glass;
  drawSources(rec);
  drawSections(rec);
  drawTimelineFilter(rec);
  drawTimeline();
  const regions = rec.answered.map((r) => r.name).join(', ') || 'none';
  $('produced').textContent = `Produced ${session.produced.toLocaleString('en-GB')} for ${session.user ? session.user.user : 'you'} from the shared care record of ${settings.region ? settings.region.name : 'this region'}. Regions that answered: ${regions}.`;
}

function drawSources(rec) {
  const ul = $('regions');
  ul.replaceChildren();
  for (const r of rec.answered) {
    ul.append(el('li', { class: 'ok' }, el('strong', { text: r.name }), ` answered (${r.text}).`));
  }
  for (const f of rec.issues.failed) {
    ul.append(el('li', { class: 'bad' },
      el('strong', { text: f.region ? f.region.name : 'The request' }),
      ` is missing: ${failureText(f.code)}. Its records are not included.`,
      el('details', {}, el('summary', { text: 'Technical detail' }), el('span', { text: f.text }))));
  }
  const notes = $('notices');
  notes.replaceChildren();
  const groups = [
    [rec.issues.partial, 'partial'],
    [rec.issues.stale, 'partial'],
    [rec.issues.withheld, 'withheld'],
    [rec.issues.notes, 'note'],
  ];
  for (const [list, cls] of groups) for (const n of list) notes.append(el('li', { class: cls, text: n.text }));
  const missing = rec.issues.failed.length + rec.issues.partial.length;
  $('sources-summary').textContent = missing
    ? 'Part of this record is missing: read the notes below before relying on it.'
    : `Every region asked answered${rec.issues.withheld.length ? ', and some items were withheld under policy' : ''}.`;
  $('sources').classList.toggle('incomplete', missing > 0);
}

/// What a failed region's issue code means to a clinician.
function failureText(code) {
  switch (code) {
    case 'timeout': return 'it did not answer in time';
    case 'transient': return 'it could not be reached';
    case 'security': case 'forbidden': case 'login': return 'it refused the request';
    case 'incomplete': return 'it answered in part';
    default: return 'its answer could not be used';
  }
}

function itemRow(item) {
  const from = [item.regions.map(regionName).join(', '), item.organisation].filter(Boolean).join(' \u00b7 ');
  const li = el('li', { class: 'item' },
    el('p', { class: 'item-head' },
      el('span', { class: 'item-title', text: item.title }),
      item.flag ? el('span', { class: item.flag.abnormal ? 'flag abnormal' : 'flag', text: item.flag.abnormal ? `Abnormal: ${item.flag.text}` : item.flag.text }) : null),
    el('p', { class: 'item-meta' },
      el('time', { datetime: item.date || undefined, text: readableDate(item.date) }),
      item.status ? ` \u00b7 ${item.status}` : '',
      from ? ` \u00b7 from ${from}` : ''));
  if (item.value || item.range) {
    li.append(el('p', { class: 'item-value' },
      item.value ? el('span', { text: item.value }) : null,
      item.range ? el('span', { class: 'range', text: ` (reference range ${item.range})` }) : null));
  }
  if (item.detail.length) li.append(el('p', { class: 'item-detail', text: item.detail.join('; ') }));
  if (item.letter) {
    li.append(el('details', {}, el('summary', { text: 'Read the letter' }), el('pre', { class: 'letter', text: item.letter })));
  }
  return li;
}

const regionName = (code) => {
  const r = session.record && session.record.answered.find((a) => a.code === code);
  return r ? r.name : code;
};

function drawSections(rec) {
  const toc = $('toc');
  const container = $('sections');
  toc.replaceChildren();
  container.replaceChildren();
  for (const s of SECTIONS) {
    const items = rec.sections[s.id];
    toc.append(el('li', {}, el('a', { href: `#section-${s.id}`, text: `${s.title} (${items.length})` })));
    const section = el('section', { id: `section-${s.id}`, class: 'section', 'aria-labelledby': `h-${s.id}` });
    section.append(el('h2', { id: `h-${s.id}`, tabindex: '-1', text: `${s.title} (${items.length})` }));
    if (!items.length) section.append(el('p', { class: 'empty', text: s.empty }));
    const list = el('ul', { class: 'items' });
    section.append(list);
    let shown = 0;
    const more = el('button', { type: 'button', class: 'more' });
    const fill = (n) => {
      for (const item of items.slice(shown, n)) list.append(itemRow(item));
      shown = Math.min(n, items.length);
      more.hidden = shown >= items.length;
      more.textContent = `Show all ${items.length} (${items.length - shown} more)`;
    };
    more.addEventListener('click', () => { fill(items.length); });
    fill(SECTION_SHOWN);
    if (items.length > SECTION_SHOWN) section.append(el('p', { class: 'print-only', text: `The newest ${SECTION_SHOWN} of ${items.length} are printed.` }));
    section.append(more);
    container.append(section);
  }
}

function drawTimelineFilter(rec) {
  const select = $('tl-type');
  select.replaceChildren(el('option', { value: '', text: `All types (${rec.items.length})` }));
  for (const t of typesPresent(rec.items)) select.append(el('option', { value: t.type, text: `${t.name} (${t.count})` }));
  $('tl-from').value = '';
  $('tl-to').value = '';
  session.shown = TIMELINE_STEP;
}

function drawTimeline() {
  const rec = session.record;
  if (!rec) return;
  const chosen = filterTimeline(rec.items, { type: $('tl-type').value, from: $('tl-from').value, to: $('tl-to').value });
  const list = $('tl-list');
  const frag = document.createDocumentFragment();
  for (const item of chosen.slice(0, session.shown)) {
    const li = itemRow(item);
    li.querySelector('.item-title').before(el('span', { class: 'kind', text: `${typeName(item.type)}: ` }));
    frag.append(li);
  }
  list.replaceChildren(frag);
  const n = Math.min(session.shown, chosen.length);
  $('tl-count').textContent = `Showing ${n} of ${chosen.length} item(s), newest first.`;
  $('tl-more').hidden = chosen.length <= session.shown;
}

// --- break-glass -----------------------------------------------------------------------------

function openGlass() {
  $('glass-reason').value = '';
  $('glass-error').textContent = '';
  $('glass-dialog').showModal();
  $('glass-reason').focus();
}

async function breakGlass(event) {
  event.preventDefault();
  const reason = $('glass-reason').value.trim();
  if (reason.length < 10) {
    $('glass-error').textContent = 'Give the reason for emergency access in at least 10 characters.';
    $('glass-reason').setAttribute('aria-invalid', 'true');
    $('glass-reason').focus();
    return;
  }
  $('glass-reason').removeAttribute('aria-invalid');
  $('glass-dialog').close();
  session.glass = reason;
  await openRecord(session.patient);
  if (!session.record || $('record').hidden) session.glass = null;
}

// --- wiring ----------------------------------------------------------------------------------

function wire() {
  $('sign-in-go').addEventListener('click', () => startSignIn(null, null).catch((e) => fail(e.message)));
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token').value.trim();
    $('token').value = '';
    signedIn(t, null).catch((err) => { session.token = null; fail(`That token was not accepted: ${err.message}`); });
  });
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const nhs = parseNhsNumber($('nhs').value);
    $('nhs-error').textContent = nhs.ok ? '' : nhs.why;
    if (!nhs.ok) { $('nhs').setAttribute('aria-invalid', 'true'); $('nhs').focus(); return; }
    $('nhs').removeAttribute('aria-invalid');
    session.glass = null;
    openRecord(nhs.value);
  });
  $('sign-out').addEventListener('click', signOut);
  $('another').addEventListener('click', () => { session.glass = null; fail(''); status(''); showSearch(); });
  $('print').addEventListener('click', () => window.print());
  $('break-glass').addEventListener('click', openGlass);
  $('glass-form').addEventListener('submit', (e) => { breakGlass(e).catch((err) => fail(err.message)); });
  $('glass-cancel').addEventListener('click', () => $('glass-dialog').close());
  for (const id of ['tl-type', 'tl-from', 'tl-to']) $(id).addEventListener('change', () => { session.shown = TIMELINE_STEP; drawTimeline(); });
  $('tl-more').addEventListener('click', () => { session.shown += TIMELINE_STEP; drawTimeline(); });
}

async function start() {
  wire();
  try {
    settings = await (await fetch('/view/settings', { credentials: 'omit' })).json();
  } catch {
    fail('The page could not read its settings from the gateway.');
    return;
  }
  $('region-name').textContent = settings.region ? settings.region.name : '';
  const params = new URLSearchParams(location.search);
  try {
    if (params.has('code') || params.has('error')) {
      const { token, patient } = await finishSignIn(params);
      await signedIn(token, patient);
    } else if (params.has('launch')) {
      await startSignIn(params.get('launch'), params.get('iss'));
    } else {
      showSignIn();
    }
  } catch (e) {
    fail(e.message);
    if (!session.token) showSignIn();
  }
}

start();
