// The one view's pure part (gateway/src/view/model.js), under node's own test runner:
//   node --test tests/view/
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  buildRecord, classifyIssues, demographics, describe, filterTimeline, formatNhsNumber, gather,
  indexResources, parseNhsNumber, readableDate, sectionOf, typesPresent,
} from '../../gateway/src/view/model.js';

const REGION = 'urn:gateway:region';
const tag = (code) => ({ meta: { tag: [{ system: REGION, code }] } });

test('NHS numbers are checked by their Modulus 11 check digit', () => {
  assert.deepEqual(parseNhsNumber('943 476 5919'), { ok: true, value: '9434765919' });
  assert.equal(parseNhsNumber('943-476-5919').ok, true);
  assert.equal(parseNhsNumber('9434765918').ok, false, 'wrong check digit');
  assert.match(parseNhsNumber('9434765918').why, /check digit/);
  assert.match(parseNhsNumber('12345').why, /10 digits/);
  assert.equal(parseNhsNumber('').ok, false);
  // A remainder of 1 gives check digit 10: no valid number has it.
  const ten = '000000006';
  let sum = 0;
  for (let i = 0; i < 9; i += 1) sum += Number(ten[i]) * (10 - i);
  assert.equal(11 - (sum % 11), 10);
  for (let d = 0; d <= 9; d += 1) assert.equal(parseNhsNumber(ten + d).ok, false);
  assert.equal(formatNhsNumber('9434765919'), '943 476 5919');
});

const page = (entries, extra = {}) => ({ resourceType: 'Bundle', type: 'searchset', entry: entries, ...extra });
const match = (resource) => ({ fullUrl: `urn:x:${resource.resourceType}/${resource.id}`, resource, search: { mode: 'match' } });

test('pages are gathered once each: resources, issues and the regions that answered', () => {
  const outcome = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'timeout', diagnostics: 'Region wessex (Wessex) timed out' }] };
  const prov = { resourceType: 'Provenance', id: 'p', agent: [{ who: { identifier: { system: REGION, value: 'dorset' }, display: 'Dorset' } }], activity: { text: 'answered the federated query in 12 ms' } };
  const a = { resourceType: 'Condition', id: 'c1', ...tag('dorset') };
  const g = gather([
    page([match(a), { resource: outcome, search: { mode: 'outcome' } }, { resource: prov, search: { mode: 'include' } }], { total: 2 }),
    page([match(a), match({ resourceType: 'Condition', id: 'c2' }), { resource: outcome, search: { mode: 'outcome' } }]),
  ]);
  assert.equal(g.resources.length, 2);
  assert.equal(g.issues.length, 1, 'the same issue on two pages is said once');
  assert.deepEqual(g.answered.map((r) => r.name), ['Dorset']);
  assert.equal(g.total, 2);
});

test('the outcome is read as failed, partial, withheld, stale and conflicting regions', () => {
  const region = (code) => ({ details: { coding: [{ system: REGION, code, display: code.toUpperCase() }] } });
  const c = classifyIssues([
    { severity: 'error', code: 'timeout', diagnostics: 'timed out', ...region('wessex') },
    { severity: 'error', code: 'transient', diagnostics: 'unreachable', ...region('kent') },
    { severity: 'warning', code: 'transient', diagnostics: 'earlier answer', ...region('kent') },
    { severity: 'warning', code: 'incomplete', diagnostics: 'answered in part', ...region('dorset') },
    { severity: 'warning', code: 'suppressed', diagnostics: 'withheld some items', ...region('dorset') },
    { severity: 'warning', code: 'suppressed', diagnostics: 'Some items were withheld under consent and access policy.' },
    { severity: 'warning', code: 'business-rule', diagnostics: 'Possible wrong-patient match: region kent', ...region('kent') },
    { severity: 'information', code: 'informational', diagnostics: 'fine' },
  ]);
  assert.deepEqual(c.failed.map((f) => f.region.code), ['wessex', 'kent']);
  assert.equal(c.stale.length, 1);
  assert.equal(c.partial.length, 1);
  assert.equal(c.withheld.length, 2);
  assert.equal(c.conflict[0].region.name, 'KENT');
  assert.equal(c.notes.length, 0, 'information is not a notice');
});

test('items fall into the sections a clinician reads, maternity and cancer by their codes', () => {
  const snomed = (code, display) => ({ coding: [{ system: 'http://snomed.info/sct', code, display }] });
  assert.equal(sectionOf({ resourceType: 'AllergyIntolerance' }), 'allergies');
  assert.equal(sectionOf({ resourceType: 'MedicationRequest', status: 'active' }), 'medications');
  assert.equal(sectionOf({ resourceType: 'MedicationRequest', status: 'completed' }), null, 'only current medications');
  assert.equal(sectionOf({ resourceType: 'Condition', code: snomed('44054006', 'Diabetes') }), 'problems');
  assert.equal(sectionOf({ resourceType: 'Condition', code: snomed('77386006', 'Pregnancy') }), 'maternity');
  assert.equal(sectionOf({ resourceType: 'Encounter', type: [snomed('424525001', 'Antenatal care')] }), 'maternity');
  assert.equal(sectionOf({ resourceType: 'Condition', code: snomed('254837009', 'Malignant neoplasm of breast') }), 'cancer');
  assert.equal(sectionOf({ resourceType: 'ServiceRequest', code: { text: 'Oncology follow-up' } }), 'cancer');
  assert.equal(sectionOf({ resourceType: 'ServiceRequest', code: { text: 'Physiotherapy' } }), 'referrals');
  assert.equal(sectionOf({ resourceType: 'Observation' }), 'results');
  assert.equal(sectionOf({ resourceType: 'DocumentReference' }), 'encounters');
  assert.equal(sectionOf({ resourceType: 'Immunization' }), 'immunisations');
});

test('a result shows its value, unit, reference range, abnormal flag, region and organisation', () => {
  const org = { resourceType: 'Organization', id: 'o1', name: 'Royal Bournemouth Hospital' };
  const role = { resourceType: 'PractitionerRole', id: 'pr1', organization: { reference: 'Organization/o1' } };
  const obs = {
    resourceType: 'Observation', id: 'x', ...tag('dorset'), status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '2823-3', display: 'Potassium' }] },
    effectiveDateTime: '2026-11-02T09:30:00Z',
    valueQuantity: { value: 6.1, unit: 'mmol/L' },
    referenceRange: [{ low: { value: 3.5, unit: 'mmol/L' }, high: { value: 5.3, unit: 'mmol/L' } }],
    interpretation: [{ coding: [{ code: 'H', display: 'High' }] }],
    performer: [{ reference: 'PractitionerRole/pr1' }],
  };
  const index = indexResources([org, role, obs].map((resource) => ({ resource, fullUrl: '' })));
  const d = describe(obs, index);
  assert.equal(d.title, 'Potassium');
  assert.equal(d.value, '6.1 mmol/L');
  assert.equal(d.range, '3.5–5.3 mmol/L');
  assert.deepEqual(d.flag, { code: 'H', text: 'High', abnormal: true });
  assert.deepEqual(d.regions, ['dorset']);
  assert.equal(d.organisation, 'Royal Bournemouth Hospital');
  // A medication by reference is named by its Medication.
  const med = { resourceType: 'Medication', id: 'm', code: { text: 'Ramipril 5mg capsules' } };
  const mr = { resourceType: 'MedicationRequest', id: 'r', status: 'active', medicationReference: { reference: 'Medication/m' } };
  assert.equal(describe(mr, indexResources([{ resource: med, fullUrl: '' }])).title, 'Ramipril 5mg capsules');
  // A letter is decoded by the decoder given.
  const doc = { resourceType: 'DocumentReference', id: 'd', type: { text: 'Discharge letter' }, content: [{ attachment: { contentType: 'text/plain', data: 'SGVsbG8=' } }] };
  assert.equal(describe(doc, new Map(), (b) => Buffer.from(b, 'base64').toString()).letter, 'Hello');
});

test('the record is sorted newest first into sections; the timeline filters by type and date', () => {
  const items = [];
  for (let i = 0; i < 3000; i += 1) {
    const day = String(1 + (i % 28)).padStart(2, '0');
    items.push(match({ resourceType: i % 3 ? 'Observation' : 'Condition', id: `i${i}`, effectiveDateTime: `20${10 + (i % 15)}-03-${day}`, onsetDateTime: `20${10 + (i % 15)}-03-${day}`, code: { text: `item ${i}` } }));
  }
  items.push(match({ resourceType: 'Patient', id: 'p', name: [{ given: ['Ann'], family: 'Smith' }], identifier: [{ system: 'https://fhir.nhs.uk/Id/nhs-number', value: '9434765919' }], birthDate: '1950-01-02', gender: 'female', address: [{ line: ['1 High St'], city: 'Poole', postalCode: 'BH1 1AA' }] }));
  items.push(match({ resourceType: 'Organization', id: 'o', name: 'Practice' }));
  const rec = buildRecord(gather([page(items)]));
  assert.equal(rec.items.length, 3000, 'context resources are not items');
  assert.equal(rec.sections.problems.length, 1000);
  assert.equal(rec.sections.results.length, 2000);
  for (let i = 1; i < rec.items.length; i += 1) assert.ok(rec.items[i - 1].date >= rec.items[i].date, 'newest first');
  const d = demographics(rec.patient);
  assert.deepEqual(d, { name: 'Ann SMITH', nhs: '9434765919', birthDate: '1950-01-02', sex: 'female', address: '1 High St, Poole, BH1 1AA' });
  const in2020 = filterTimeline(rec.items, { type: 'Condition', from: '2019-01-01', to: '2019-12-31' });
  assert.ok(in2020.length > 0);
  assert.ok(in2020.every((x) => x.type === 'Condition' && x.date.startsWith('2019')));
  assert.equal(filterTimeline(rec.items).length, 3000);
  assert.deepEqual(typesPresent(rec.items).map((t) => [t.type, t.count]), [['Condition', 1000], ['Observation', 2000]]);
});

test('dates read as a clinician says them', () => {
  assert.equal(readableDate('2026-12-03'), '3 Dec 2026');
  assert.equal(readableDate('2026-12-03T14:05:00Z'), '3 Dec 2026, 14:05');
  assert.equal(readableDate('2026-12'), 'Dec 2026');
  assert.equal(readableDate(''), 'date not recorded');
});
