// The one view's pure part: what the page decides from the gateway's Bundles, with no DOM,
// no network and no storage, so node's own test runner can check it (tests/view/model.test.mjs).

export const REGION_SYSTEM = 'urn:gateway:region';
export const NHS_SYSTEM = 'https://fhir.nhs.uk/Id/nhs-number';
const SNOMED = 'http://snomed.info/sct';

// --- NHS numbers -------------------------------------------------------------------------

/// An NHS number as typed (spaces and dashes allowed), checked by its Modulus 11 check digit:
/// {ok: true, value: '9434765919'} or {ok: false, why}.
export function parseNhsNumber(text) {
  const digits = String(text || '').replace(/[\s-]/g, '');
  if (!/^\d{10}$/.test(digits)) return { ok: false, why: 'An NHS number is 10 digits.' };
  let sum = 0;
  for (let i = 0; i < 9; i += 1) sum += Number(digits[i]) * (10 - i);
  let check = 11 - (sum % 11);
  if (check === 11) check = 0;
  if (check === 10 || check !== Number(digits[9])) {
    return { ok: false, why: 'This is not a valid NHS number: its check digit is wrong. Check it and type it again.' };
  }
  return { ok: true, value: digits };
}

/// 943 476 5919: the way an NHS number is read out and printed.
export function formatNhsNumber(n) {
  const d = String(n || '');
  return d.length === 10 ? `${d.slice(0, 3)} ${d.slice(3, 6)} ${d.slice(6)}` : d;
}

// --- Bundles -----------------------------------------------------------------------------

/// Gathers the pages of one answer: the resources (match and include entries, each once), the
/// outcome's issues (each once), the regions that answered (from their Provenance) and the
/// total the gateway reported.
export function gather(pages) {
  const resources = [];
  const seen = new Set();
  const issues = [];
  const said = new Set();
  const answered = new Map();
  let total = null;
  for (const page of pages) {
    if (typeof page.total === 'number' && total === null) total = page.total;
    for (const entry of page.entry || []) {
      const r = entry.resource;
      if (!r) continue;
      const mode = entry.search && entry.search.mode;
      if (r.resourceType === 'OperationOutcome') {
        for (const issue of r.issue || []) {
          const key = `${issue.severity}|${issue.code}|${issue.diagnostics}`;
          if (!said.has(key)) { said.add(key); issues.push(issue); }
        }
        continue;
      }
      if (r.resourceType === 'Provenance') {
        for (const a of r.agent || []) {
          const id = a.who && a.who.identifier;
          if (id && id.system === REGION_SYSTEM) {
            answered.set(id.value, { code: id.value, name: a.who.display || id.value, text: (r.activity && r.activity.text) || '' });
          }
        }
        continue;
      }
      const key = entry.fullUrl || `${r.resourceType}/${r.id}`;
      if (seen.has(key)) continue;
      seen.add(key);
      resources.push({ resource: r, fullUrl: entry.fullUrl || '', mode: mode || 'match' });
    }
  }
  return { resources, issues, answered: [...answered.values()], total };
}

/// The region a coded issue names (its details carry the region's code and name), if any.
function regionOf(issue) {
  const c = ((issue.details && issue.details.coding) || []).find((x) => x.system === REGION_SYSTEM);
  return c ? { code: c.code, name: c.display || c.code } : null;
}

/// What the outcome says, as the page shows it before the record:
/// failed (a region's records are missing: it failed, timed out or refused), partial (a
/// region answered in part), withheld (items withheld by policy: never which), stale (an
/// earlier answer shown), conflict (regions disagree on demographics: a possible wrong
/// patient), and other notes.
export function classifyIssues(issues) {
  const out = { failed: [], partial: [], withheld: [], stale: [], conflict: [], notes: [] };
  for (const issue of issues) {
    const region = regionOf(issue);
    const text = issue.diagnostics || '';
    const item = { region, text, severity: issue.severity, code: issue.code };
    if (issue.code === 'business-rule' && /wrong-patient/i.test(text)) out.conflict.push(item);
    else if (issue.code === 'suppressed') out.withheld.push(item);
    else if (issue.code === 'incomplete') out.partial.push(item);
    else if (issue.severity === 'error' || issue.severity === 'fatal') out.failed.push(item);
    else if (issue.code === 'transient' && region) out.stale.push(item);
    else if (issue.severity !== 'information') out.notes.push(item);
  }
  return out;
}

// --- Reading items -------------------------------------------------------------------------

const text = (cc) => {
  if (!cc) return '';
  if (Array.isArray(cc)) return cc.map(text).filter(Boolean).join(', ');
  if (cc.text) return cc.text;
  const c = (cc.coding || []).find((x) => x.display) || (cc.coding || [])[0];
  return c ? c.display || c.code || '' : '';
};

const codes = (cc) => {
  const list = Array.isArray(cc) ? cc : [cc];
  return list.flatMap((x) => ((x && x.coding) || []).map((c) => `${c.system}|${c.code}`));
};

/// The date a clinician would file an item under (ISO text), or ''.
export function dateOf(r) {
  const p = (x) => (x && x.start) || '';
  return r.effectiveDateTime || p(r.effectivePeriod) || r.occurrenceDateTime || r.performedDateTime
    || p(r.performedPeriod) || r.onsetDateTime || r.authoredOn || r.recordedDate || r.issued
    || p(r.period) || r.date || r.dateAsserted || r.recorded || r.created
    || (r.meta && r.meta.lastUpdated) || '';
}

/// The region codes a merged item is tagged with.
export function regionsOf(r) {
  return ((r.meta && r.meta.tag) || []).filter((t) => t.system === REGION_SYSTEM).map((t) => t.code);
}

/// An index of the answer's resources by reference (`Type/id` and fullUrl), for resolving
/// the organisations, practitioners and medications an item refers to.
export function indexResources(resources) {
  const index = new Map();
  for (const { resource, fullUrl } of resources) {
    index.set(`${resource.resourceType}/${resource.id}`, resource);
    if (fullUrl) index.set(fullUrl, resource);
  }
  return index;
}

const resolve = (ref, index) => (ref && ref.reference ? index.get(ref.reference) : undefined);

/// The organisation an item came from: the first organisation it names (directly, through a
/// practitioner role, or by display), or ''.
export function organisationOf(r, index) {
  const refs = [];
  const add = (x) => { if (x) refs.push(...(Array.isArray(x) ? x : [x])); };
  add(r.serviceProvider); add(r.performer && r.performer.map((p) => p.actor || p));
  add(r.recorder); add(r.asserter); add(r.requester); add(r.author); add(r.custodian);
  add(r.organization); add(r.informationSource); add(r.managingOrganization);
  add(r.participant && r.participant.map((p) => p.individual));
  for (const ref of refs) {
    const target = resolve(ref, index);
    if (target && target.resourceType === 'Organization' && target.name) return target.name;
    if (target && target.resourceType === 'PractitionerRole') {
      const org = resolve(target.organization, index);
      if (org && org.name) return org.name;
    }
    if (ref.reference && ref.reference.startsWith('Organization/') && ref.display) return ref.display;
  }
  const named = refs.find((ref) => !ref.reference && ref.display);
  return named ? named.display : '';
}

const quantity = (q) => (q && q.value !== undefined ? `${q.value}${q.unit ? ` ${q.unit}` : ''}` : '');

/// An Observation's value as text.
function valueOf(r) {
  if (r.valueQuantity) return quantity(r.valueQuantity);
  if (r.valueCodeableConcept) return text(r.valueCodeableConcept);
  if (r.valueString) return r.valueString;
  if (r.valueBoolean !== undefined) return r.valueBoolean ? 'yes' : 'no';
  if (r.valueInteger !== undefined) return String(r.valueInteger);
  if (r.component) return r.component.map((c) => `${text(c.code)} ${quantity(c.valueQuantity)}`.trim()).join('; ');
  return '';
}

function rangeOf(r) {
  const range = (r.referenceRange || [])[0];
  if (!range) return '';
  if (range.text) return range.text;
  const low = quantity(range.low);
  const high = quantity(range.high);
  if (low && high) return `${range.low.value}–${high}`;
  return low ? `≥ ${low}` : high ? `≤ ${high}` : '';
}

const ABNORMAL = new Set(['H', 'HH', 'L', 'LL', 'A', 'AA', 'HU', 'LU', 'POS', 'R']);

function flagOf(r) {
  const c = ((r.interpretation || []).flatMap((i) => i.coding || []))[0];
  if (!c) return null;
  return { code: c.code, text: c.display || c.code, abnormal: ABNORMAL.has(c.code) };
}

function medicationOf(r, index) {
  if (r.medicationCodeableConcept) return text(r.medicationCodeableConcept);
  const m = resolve(r.medicationReference, index);
  return (m && text(m.code)) || (r.medicationReference && r.medicationReference.display) || '';
}

/// A plain-text letter carried in a DocumentReference, decoded (or '').
function letterOf(r, decode) {
  for (const c of r.content || []) {
    const a = c.attachment || {};
    if (a.data && /^text\/plain/.test(a.contentType || '')) {
      try { return decode(a.data); } catch { return ''; }
    }
  }
  return '';
}

const MATERNITY_CODES = new Set([
  `${SNOMED}|77386006`, // pregnancy
  `${SNOMED}|424525001`, // antenatal care
  `${SNOMED}|169826009`, // single live birth
  `${SNOMED}|133906008`, // postpartum care
  `${SNOMED}|236973005`, // delivery procedure
]);
const CANCER_CODES = new Set([
  `${SNOMED}|254837009`, // malignant neoplasm of breast
  `${SNOMED}|363346000`, // malignant neoplastic disease
  `${SNOMED}|93870000`, // malignant neoplasm of liver
  `${SNOMED}|254637007`, // non-small cell lung cancer
]);

/// Which section of the one view an item belongs in (or null: timeline only).
export function sectionOf(r) {
  const all = [...codes(r.code), ...codes(r.type || []), ...codes(r.category || [])];
  const words = `${text(r.code)} ${text(r.type)}`.toLowerCase();
  if (all.some((c) => MATERNITY_CODES.has(c)) || /antenatal|pregnan|maternity|postnatal/.test(words)) return 'maternity';
  if (all.some((c) => CANCER_CODES.has(c)) || /oncolog|malignan|cancer|neoplasm/.test(words)) return 'cancer';
  switch (r.resourceType) {
    case 'AllergyIntolerance': return 'allergies';
    case 'MedicationRequest': case 'MedicationStatement':
      return ['active', 'on-hold', 'intended'].includes(r.status) ? 'medications' : null;
    case 'Condition': return 'problems';
    case 'Encounter': case 'DocumentReference': case 'Composition': case 'Procedure': return 'encounters';
    case 'Observation': case 'DiagnosticReport': return 'results';
    case 'Immunization': return 'immunisations';
    case 'ServiceRequest': return 'referrals';
    case 'EpisodeOfCare': case 'CarePlan': return null;
    default: return null;
  }
}

/// The sections, in the order a clinician reads them.
export const SECTIONS = [
  { id: 'allergies', title: 'Allergies and adverse reactions', empty: 'No allergies or adverse reactions recorded.' },
  { id: 'medications', title: 'Current medications', empty: 'No current medications recorded.' },
  { id: 'problems', title: 'Problems and conditions', empty: 'No problems or conditions recorded.' },
  { id: 'encounters', title: 'Recent encounters, procedures and letters', empty: 'No encounters recorded.' },
  { id: 'results', title: 'Results: pathology and radiology', empty: 'No results recorded.' },
  { id: 'immunisations', title: 'Immunisations', empty: 'No immunisations recorded.' },
  { id: 'referrals', title: 'Referrals', empty: 'No referrals recorded.' },
  { id: 'maternity', title: 'Maternity', empty: 'No maternity care recorded.' },
  { id: 'cancer', title: 'Cancer care and follow-up', empty: 'No cancer care recorded.' },
];

const TYPE_NAMES = {
  AllergyIntolerance: 'Allergy', MedicationRequest: 'Prescription', MedicationStatement: 'Medication',
  Condition: 'Condition', Encounter: 'Encounter', DocumentReference: 'Letter', Composition: 'Document',
  Procedure: 'Procedure', Observation: 'Result', DiagnosticReport: 'Report', Immunization: 'Immunisation',
  ServiceRequest: 'Referral', CarePlan: 'Care plan', EpisodeOfCare: 'Episode of care', Consent: 'Consent',
};
export const typeName = (t) => TYPE_NAMES[t] || t;

/// What the page shows of one clinical item.
export function describe(r, index, decode = () => '') {
  const d = {
    type: r.resourceType,
    typeName: typeName(r.resourceType),
    date: dateOf(r),
    title: '',
    detail: [],
    status: '',
    value: '', range: '', flag: null, letter: '',
    regions: regionsOf(r),
    organisation: organisationOf(r, index),
    section: sectionOf(r),
  };
  const status = (cc) => text(cc);
  switch (r.resourceType) {
    case 'AllergyIntolerance':
      d.title = text(r.code);
      d.detail = (r.reaction || []).map((x) => text(x.manifestation)).filter(Boolean);
      if (r.criticality) d.detail.push(`criticality ${r.criticality}`);
      d.status = status(r.clinicalStatus);
      break;
    case 'MedicationRequest': case 'MedicationStatement':
      d.title = medicationOf(r, index);
      d.detail = (r.dosageInstruction || r.dosage || []).map((x) => x.text).filter(Boolean);
      d.status = r.status || '';
      break;
    case 'Condition':
      d.title = text(r.code);
      d.status = status(r.clinicalStatus);
      break;
    case 'Observation':
      d.title = text(r.code);
      d.value = valueOf(r);
      d.range = rangeOf(r);
      d.flag = flagOf(r);
      d.detail = [text(r.category)].filter(Boolean);
      break;
    case 'DiagnosticReport':
      d.title = text(r.code);
      d.value = r.conclusion || '';
      d.detail = [text(r.category)].filter(Boolean);
      d.status = r.status || '';
      break;
    case 'Encounter':
      d.title = text(r.type) || text(r.class) || 'Encounter';
      d.detail = [text(r.reasonCode)].filter(Boolean);
      d.status = r.status || '';
      break;
    case 'DocumentReference':
      d.title = text(r.type) || ((r.content || [])[0] || {}).attachment?.title || 'Document';
      d.letter = letterOf(r, decode);
      break;
    case 'Immunization':
      d.title = text(r.vaccineCode);
      d.status = r.status || '';
      break;
    case 'ServiceRequest':
      d.title = text(r.code) || 'Referral';
      d.detail = [text(r.category)].filter(Boolean);
      d.status = r.status || '';
      break;
    case 'Procedure':
      d.title = text(r.code);
      d.status = r.status || '';
      break;
    default:
      d.title = text(r.code) || text(r.type) || r.resourceType;
  }
  if (!d.title) d.title = typeName(r.resourceType);
  return d;
}

// --- The record ------------------------------------------------------------------------------

const CONTEXT_TYPES = new Set(['Patient', 'Organization', 'Practitioner', 'PractitionerRole', 'Location', 'Medication', 'Provenance', 'OperationOutcome', 'Consent']);
const newestFirst = (a, b) => (a.date < b.date ? 1 : a.date > b.date ? -1 : 0);

/// The one view of a gathered answer: the patient, the clinical items described and sorted
/// newest first, grouped into sections.
export function buildRecord(gathered, decode) {
  const index = indexResources(gathered.resources);
  const patient = (gathered.resources.find((x) => x.resource.resourceType === 'Patient' && x.mode === 'match')
    || gathered.resources.find((x) => x.resource.resourceType === 'Patient') || {}).resource || null;
  const items = gathered.resources
    .filter((x) => !CONTEXT_TYPES.has(x.resource.resourceType))
    .map((x) => describe(x.resource, index, decode))
    .sort(newestFirst);
  const sections = Object.fromEntries(SECTIONS.map((s) => [s.id, []]));
  for (const item of items) if (item.section) sections[item.section].push(item);
  return { patient, items, sections, issues: classifyIssues(gathered.issues), answered: gathered.answered };
}

/// The banner's fields of a (merged) Patient.
export function demographics(p) {
  if (!p) return null;
  const name = (p.name || []).find((n) => n.use === 'official') || (p.name || [])[0] || {};
  const nhs = (p.identifier || []).find((i) => i.system === NHS_SYSTEM);
  const address = (p.address || []).find((a) => a.use === 'home') || (p.address || [])[0];
  return {
    name: name.text || [...(name.given || []), (name.family || '').toUpperCase()].filter(Boolean).join(' '),
    nhs: nhs ? nhs.value : '',
    birthDate: p.birthDate || '',
    sex: p.gender || '',
    address: address ? (address.text || [...(address.line || []), address.city, address.postalCode].filter(Boolean).join(', ')) : '',
  };
}

/// The timeline's items of a type ('' for all) between two dates (ISO 'YYYY-MM-DD', either
/// empty), newest first. Items without a date are kept only when no date is asked for.
export function filterTimeline(items, { type = '', from = '', to = '' } = {}) {
  return items.filter((item) => {
    if (type && item.type !== type) return false;
    if (!from && !to) return true;
    const day = item.date.slice(0, 10);
    if (!day) return false;
    if (from && day < from) return false;
    if (to && day > to) return false;
    return true;
  });
}

/// The types present, with their counts, for the timeline's filter.
export function typesPresent(items) {
  const counts = new Map();
  for (const item of items) counts.set(item.type, (counts.get(item.type) || 0) + 1);
  return [...counts.entries()].sort((a, b) => typeName(a[0]).localeCompare(typeName(b[0])))
    .map(([type, count]) => ({ type, name: typeName(type), count }));
}

/// A date as a clinician reads it: 3 Dec 2026 (the time too, when it has one).
export function readableDate(iso) {
  if (!iso) return 'date not recorded';
  const m = /^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:T(\d{2}):(\d{2}))?/.exec(iso);
  if (!m) return iso;
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const [, y, mo, d, h, mi] = m;
  let out = y;
  if (mo) out = `${months[Number(mo) - 1]} ${out}`;
  if (d) out = `${Number(d)} ${out}`;
  if (h && !(h === '00' && mi === '00')) out += `, ${h}:${mi}`;
  return out;
}
