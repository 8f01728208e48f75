// The second, independent FHIR R4 check of the gateway's output: the npm package `fhir`
// (FHIR.js), which checks structure and, unlike fhir.resources, coded values against their
// required value sets. Usage: node scripts/fhir-js/validate.js DIR
// Every *.json file in DIR must validate with no error; warnings are printed.
'use strict';
const fs = require('fs');
const path = require('path');
const { Fhir } = require('fhir');

const dir = process.argv[2];
if (!dir) {
  console.error('usage: validate.js DIR');
  process.exit(2);
}
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
if (files.length === 0) {
  console.error(`no FHIR artifacts in ${dir}: the integration tests write them`);
  process.exit(1);
}
const fhir = new Fhir();
let failed = 0;
let warnings = 0;
for (const file of files) {
  const resource = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
  const result = fhir.validate(resource, { errorOnUnexpected: true });
  const errors = result.messages.filter((m) => m.severity === 'error');
  const others = result.messages.filter((m) => m.severity !== 'error');
  // Codes outside example or extensible value sets (LOINC, SNOMED CT, region tags) are
  // warnings, not errors: counted, not printed one by one.
  warnings += others.length;
  if (errors.length > 0) {
    failed += 1;
    console.log(`FAIL ${file}`);
    for (const m of errors.slice(0, 20)) {
      console.log(`  ${m.resourceId || ''} ${m.location}: ${m.message}`);
    }
  }
}
console.log(
  `fhir-js (coded values): ${files.length - failed} passed, ${failed} failed; ` +
    `${warnings} warnings about codes outside example or extensible value sets`
);
process.exit(failed === 0 ? 0 : 1);
