// Drives the governance console in Debian's chromium (playwright-core). Run by
// tests/governance.rs, which starts real gateways and passes, in the environment:
// CONSOLE_URL, GOVERNANCE_TOKEN, PILOT_TOKEN (a clinician of organisation RXX01), NHS_NUMBER,
// PILOT_RULE (a rule withholding allergies from RXX01), SCREENSHOTS (a directory).
// Exits non-zero, naming the step, when the console does not behave.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const url = env('CONSOLE_URL');
const nhs = env('NHS_NUMBER');
const shots = env('SCREENSHOTS');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

let step = 'launch';
const log = (s) => { step = s; console.log('step:', s); };

function check(cond, what) {
  if (!cond) throw new Error(`${step}: ${what}`);
}

const browser = await chromium.launch({ executablePath, args: ['--headless', '--no-sandbox'] });
try {
  // The gateway's certificate is from the test federation's own CA; the browser is not given
  // that CA, so certificate errors are ignored here (TLS itself is tested elsewhere).
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const shot = (name) => page.screenshot({ path: path.join(shots, name + '.png'), fullPage: true });
  const status = () => page.locator('#status').innerText();

  // What the pilot clinician's query returns: the number of allergy entries.
  const allergies = async () => {
    const base = url.replace(/\/admin\/$/, '');
    const r = await context.request.get(`${base}/fhir/AllergyIntolerance?patient.identifier=https://fhir.nhs.uk/Id/nhs-number%7C${nhs}`,
      { headers: { Authorization: 'Bearer ' + env('PILOT_TOKEN') } });
    check(r.ok(), 'clinician query answered ' + r.status());
    const b = await r.json();
    return (b.entry || []).filter((e) => e.search && e.search.mode === 'match').length;
  };

  log('sign in');
  await page.goto(url);
  await page.locator('#token').waitFor();
  // Keyboard: the first Tab reaches the skip link.
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement.className === 'skip'), 'the skip link is first in tab order');
  await shot('01-sign-in');
  await page.fill('#token', env('GOVERNANCE_TOKEN'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who', { hasText: 'Signed in as' }).waitFor();
  check((await page.locator('#who').innerText()).includes('R0001'), 'the role is shown');

  log('break a policy and see the validation error');
  await page.locator('#check-summary', { hasText: 'Valid' }).waitFor();
  await page.selectOption('#file-select', { label: '10-direct-care.cedar' });
  const original = await page.inputValue('#source');
  const broken = original + env('PILOT_RULE').replace('};', '}');
  await page.fill('#source', broken);
  const problem = page.locator('#problems li').first();
  await problem.waitFor();
  const text = await problem.innerText();
  check(/10-direct-care\.cedar, line \d+, column \d+/.test(text), 'the error names file, line and column: ' + text);
  check(await page.locator('.gutter .bad').count() > 0, 'the gutter marks the line');
  await shot('02-validation-error');
  // The error link moves the cursor to the problem.
  await problem.getByRole('button').click();
  check(await page.evaluate(() => document.activeElement.id === 'source'), 'the editor has focus after jumping to the problem');

  log('fix it and save the draft');
  await page.fill('#source', original + env('PILOT_RULE'));
  await page.locator('#check-summary', { hasText: 'Valid' }).waitFor();
  check((await page.locator('#check-summary').innerText()).includes('1 file(s) differ'), 'one file differs');
  await page.fill('#comment', 'withhold allergies from the pilot site RXX01');
  await page.getByRole('button', { name: 'Save draft' }).click();
  await page.locator('#status', { hasText: 'Saved as draft version' }).waitFor();
  const draft = (await status()).match(/draft version (\d+)/)[1];
  await shot('03-valid-draft');

  log('diff');
  await page.goto(url + '#diff');
  await page.selectOption('#diff-version', draft);
  await page.locator('#diff-out pre .add', { hasText: 'pilot-no-allergies' }).waitFor();
  await shot('04-diff');

  log('simulate');
  await page.goto(url + '#simulate');
  await page.fill('#sim-role', 'R8000');
  await page.fill('#sim-org', 'RXX01');
  await page.selectOption('#sim-draft', draft);
  await page.fill('#sim-patient', nhs);
  await page.getByRole('button', { name: 'Simulate' }).click();
  await page.locator('#sim-summary', { hasText: 'would now be withheld from R8000 users' }).waitFor();
  await shot('05-simulator');

  log('activate and see the clinician answer change');
  const before = await allergies();
  check(before > 0, 'the pilot clinician sees allergies before');
  await page.goto(url + '#history');
  await page.getByRole('button', { name: `Activate version ${draft}` }).click();
  await page.fill('#activate-reason', 'pilot agreed by the Caldicott guardian');
  await page.locator('#activate-go').click();
  await page.locator('#status', { hasText: `Version ${draft} is now active` }).waitFor();
  const during = await allergies();
  check(during === 0, `no allergies after activation (saw ${during})`);
  await shot('06-activated');

  log('roll back and see it change back');
  await page.getByRole('button', { name: /Roll back to version 1$/ }).click();
  await page.fill('#activate-reason', 'pilot ended, back to the standard set');
  await page.locator('#activate-go').click();
  await page.locator('#status', { hasText: 'Version 1 is now active' }).waitFor();
  const after = await allergies();
  check(after === before, `allergies are back after rollback (${after} of ${before})`);
  await shot('07-rolled-back');

  log('audit search');
  await page.goto(url + '#audit');
  await page.fill('#audit-patient', nhs);
  await page.getByRole('button', { name: 'Search' }).click();
  await page.locator('#audit-table tbody tr').first().waitFor();
  await shot('08-audit-search');

  log('break-glass review');
  await page.goto(url + '#review');
  const row = page.locator('#review-table tbody tr', { hasText: 'collapsed in clinic' });
  await row.waitFor();
  await row.getByLabel('Review note').fill('confirmed with the clinic lead');
  await row.getByRole('button', { name: /Mark \d+ reviewed/ }).click();
  await page.locator('#status', { hasText: 'marked reviewed' }).waitFor();
  await shot('09-break-glass-review');

  log('consent lookup');
  await page.goto(url + '#consent');
  await page.fill('#consent-patient', nhs);
  await page.getByRole('button', { name: 'Look up' }).click();
  await page.locator('#consent-summary').waitFor();
  await shot('10-consent-lookup');

  check(errors.length === 0, 'no script errors: ' + errors.join('; '));
  console.log('console test passed');
} catch (e) {
  console.error(`failed at step "${step}":`, e.message);
  process.exitCode = 1;
} finally {
  await browser.close();
}
