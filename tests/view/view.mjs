// Drives the one-view page in Debian's chromium (playwright-core), signing in at a real OpenID
// provider (tests/oidc/provider.mjs). Run by tests/view.rs, which starts the provider and real
// gateways and passes, in the environment:
//   VIEW_URL (https://localhost:{port}/view/), ISS (the gateway's FHIR base), IDP (issuer),
//   LAUNCH_SECRET, CLINICIAN and NURSE (username:password), SCREENSHOTS (a directory),
//   SCENARIO: "states" or "large", and for each scenario the patients below.
// NODE_EXTRA_CA_CERTS names the test CA, so that this script may register launches at the
// provider over TLS. Exits non-zero, naming the step, when the page does not behave.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const viewUrl = env('VIEW_URL');
const shots = env('SCREENSHOTS');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const spaced = (n) => `${n.slice(0, 3)} ${n.slice(3, 6)} ${n.slice(6)}`;

let step = 'launch';
let current = null; // the page in use, for the failure's screenshot
const gatewayCookies = []; // answers of the gateway's that set a cookie
const log = (s) => { step = s; console.log('step:', s); };
function check(cond, what) {
  if (!cond) throw new Error(`${step}: ${what}`);
}

// A launch context registered by the partner system (the test plays the GP system).
async function registerLaunch(patient) {
  const r = await fetch(`${env('IDP')}/launch`, {
    method: 'POST',
    headers: { authorization: `Bearer ${env('LAUNCH_SECRET')}`, 'content-type': 'application/json' },
    body: JSON.stringify({ patient }),
  });
  check(r.status === 201, `the provider registered the launch (${r.status})`);
  return (await r.json()).launch;
}

async function signInAtProvider(page, who) {
  const [username, password] = env(who).split(':');
  await page.waitForURL((u) => u.href.startsWith(env('IDP')));
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/// The partner system registers a launch for the patient and opens the page; the user signs in.
async function ehrLaunch(page, nhs, who) {
  const launch = await registerLaunch(nhs);
  await page.goto(`${viewUrl}?launch=${launch}&iss=${encodeURIComponent(env('ISS'))}`);
  await signInAtProvider(page, who);
  await ready(page);
}

const ready = (page) => page.waitForSelector('body[data-state="ready"]', { timeout: 30000 });

async function newPage(browser, viewport = { width: 1280, height: 1000 }) {
  // The test CA is not given to the browser: certificate errors are ignored (TLS itself is
  // tested elsewhere).
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  current = page;
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // Script errors and Content-Security-Policy refusals; a refused request (the 403 the test
  // provokes, a favicon) is reported as a failed resource load, which is not one.
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text()); });
  page.on('response', async (r) => {
    if (new URL(r.url()).origin === new URL(viewUrl).origin && (await r.headerValue('set-cookie'))) gatewayCookies.push(r.url());
  });
  return { context, page, errors };
}

const shot = (page, name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

async function axe(page, what) {
  // Evaluated through the DevTools protocol, which the page's CSP does not govern.
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] },
  }));
  const v = result.violations.map((x) => `${x.id} (${x.impact}): ${x.help} at ${x.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(' | ')}`);
  check(v.length === 0, `axe found ${v.length} accessibility violation(s) in ${what}:\n  ${v.join('\n  ')}`);
  console.log(`axe: ${what}: 0 violations, ${result.passes.length} rules passed`);
}

/// Nothing of the patient's in the address, the history's entries, storage or cookies.
async function nothingStored(page, context, nhs) {
  const url = page.url();
  check(new URL(url).pathname === '/view/' && !new URL(url).search, `the address is bare: ${url}`);
  check(!url.includes(nhs), 'no NHS number in the address');
  const storage = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length, names: Object.keys(sessionStorage) }));
  check(storage.local === 0 && storage.session === 0, `no browser storage after sign-in: ${JSON.stringify(storage)}`);
  // Cookies are not kept apart by port, so the provider's own (on another port of localhost)
  // would show in the jar: what is checked is that no answer of the gateway's set one.
  check(gatewayCookies.length === 0, `the gateway set no cookie: ${gatewayCookies}`);
}

async function states(browser) {
  const everywhere = env('PATIENT_EVERYWHERE');
  const failed = env('FAILED_REGION');
  {
    const { context, page, errors } = await newPage(browser);
    log('EHR launch: the partner system opens the page in the patient context');
    await ehrLaunch(page, everywhere, 'CLINICIAN');
    const banner = await page.locator('#banner').innerText();
    check(banner.includes(spaced(everywhere)), `the banner shows the launch patient's NHS number: ${banner}`);
    for (const field of ['Born', 'Sex', 'Address']) check(banner.includes(field), `the banner shows ${field}`);
    check((await page.locator('#who').innerText()).includes('R8000'), 'the signed-in role is shown');
    await nothingStored(page, context, everywhere);

    log('the regions that answered and the one that failed, before the record');
    const sources = await page.locator('#sources').innerText();
    check(sources.includes('Part of this record is missing'), `the missing region is flagged: ${sources}`);
    check(new RegExp(`${failed}[^\\n]*is missing: it could not be reached`, 'i').test(sources), `the failed region is named: ${sources}`);
    const order = await page.evaluate(() => {
      const pos = (id) => [...document.querySelectorAll('main *')].indexOf(document.getElementById(id));
      return [pos('sources'), pos('section-allergies'), pos('section-medications'), pos('section-problems'), pos('section-results'), pos('section-cancer'), pos('timeline')];
    });
    check(order.every((p, i) => p >= 0 && (i === 0 || p > order[i - 1])), `sources, then sections in reading order, then the timeline: ${order}`);
    const allergies = await page.locator('#section-allergies .item').count();
    check(allergies > 0, 'allergies are shown');
    const tags = await page.locator('#section-allergies .item-meta').first().innerText();
    const names = await page.locator('#regions li.ok strong').allInnerTexts();
    check(names.length === 2 && names.some((n) => tags.includes(`from ${n}`)), `each item names the region it came from (${names}): ${tags}`);
    await shot(page, '01-ehr-launch');

    log('accessibility of the record (axe-core)');
    await axe(page, 'the record');

    log('keyboard: the skip link is the first stop, the section links reach their sections');
    check(await page.evaluate(() => document.querySelector('a[href], button:not([hidden]), input, select, textarea').className === 'skip'), 'the skip link is first in tab order');
    await page.locator('#toc a[href="#section-results"]').focus();
    await page.keyboard.press('Enter');
    check(await page.evaluate(() => location.hash === '#section-results' && location.pathname === '/view/'), 'a section link moves to its section');
    await page.evaluate(() => history.replaceState(null, '', '/view/'));

    log('the timeline filters by type and date');
    const all = await page.locator('#tl-count').innerText();
    await page.selectOption('#tl-type', 'Observation');
    const obs = await page.locator('#tl-count').innerText();
    check(obs !== all && (await page.locator('#tl-list .kind').allInnerTexts()).every((t) => t.startsWith('Result')), `only results: ${obs}`);
    await page.fill('#tl-from', '2999-01-01');
    await page.locator('#tl-from').dispatchEvent('change');
    check((await page.locator('#tl-count').innerText()).includes('of 0 item'), 'no item after a future date');
    await page.selectOption('#tl-type', '');
    await page.fill('#tl-from', '');
    await page.locator('#tl-from').dispatchEvent('change');

    log('printing');
    await page.emulateMedia({ media: 'print' });
    check(await page.locator('#produced').isVisible(), 'the print shows when and from where it was produced');
    const produced = await page.locator('#produced').innerText();
    check(/Produced .*Regions that answered: /.test(produced), `the print names the time and the regions: ${produced}`);
    check(!(await page.locator('#timeline').isVisible()) && !(await page.locator('.actions').isVisible()), 'controls are not printed');
    await shot(page, '02-print');
    await page.pdf({ path: path.join(shots, '02-print.pdf'), format: 'A4' });
    await page.emulateMedia({ media: 'screen' });

    log('a ward tablet');
    await page.setViewportSize({ width: 768, height: 1024 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `no sideways scrolling on a tablet (${overflow}px too wide)`);
    await shot(page, '03-tablet');
    await page.setViewportSize({ width: 390, height: 844 });
    const phone = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(phone <= 0, `no sideways scrolling on a phone (${phone}px too wide)`);
    await page.setViewportSize({ width: 1280, height: 1000 });

    log('a launch is for its patient only');
    await page.getByRole('button', { name: 'Another patient' }).click();
    await page.fill('#nhs', env('PATIENT_MISMATCHED'));
    await page.getByRole('button', { name: 'Open the record' }).click();
    await page.locator('#error').filter({ hasText: /./ }).waitFor();
    check(await page.locator('#record').isHidden(), 'no record of another patient');
    check(errors.length === 0, `no script errors: ${errors}`);
    await context.close();
  }
  {
    const { context, page, errors } = await newPage(browser);
    log('standalone launch: a nurse signs in directly');
    await page.goto(viewUrl);
    await page.getByRole('button', { name: /Sign in with your organisation/ }).waitFor();
    await page.keyboard.press('Tab');
    check(await page.evaluate(() => document.activeElement.className === 'skip'), 'the skip link is the first Tab stop');
    await page.keyboard.press('Enter');
    check(await page.evaluate(() => document.activeElement.id === 'main'), 'the skip link moves focus to the main content');
    await axe(page, 'the sign-in page');
    await page.getByRole('button', { name: /Sign in with your organisation/ }).click();
    await signInAtProvider(page, 'NURSE');
    await page.locator('#nhs').waitFor();
    await nothingStored(page, context, everywhere);

    log('an NHS number with a wrong check digit is refused before any query');
    const wrong = everywhere.slice(0, 9) + String((Number(everywhere[9]) + 1) % 10);
    await page.fill('#nhs', wrong);
    await page.getByRole('button', { name: 'Open the record' }).click();
    check((await page.locator('#nhs-error').innerText()).includes('check digit'), 'the check digit is named');
    check(await page.locator('#nhs').getAttribute('aria-invalid') === 'true', 'the field is marked invalid');
    await axe(page, 'the search with an error');
    await shot(page, '04-nhs-check-digit');

    log('a withheld sensitive item is not revealed');
    await page.fill('#nhs', spaced(everywhere));
    await page.getByRole('button', { name: 'Open the record' }).click();
    await ready(page);
    const text = await page.locator('body').innerText();
    check(/withheld/i.test(await page.locator('#sources').innerText()), 'the page says items were withheld');
    const secret = env('WITHHELD_TEXT');
    check(!text.includes(secret) && !(await page.content()).includes(secret), `the withheld item (${secret}) is nowhere on the page`);
    await shot(page, '05-withheld');

    log('regions disagreeing on demographics: a possible wrong patient');
    await page.getByRole('button', { name: 'Another patient' }).click();
    await page.fill('#nhs', env('PATIENT_MISMATCHED'));
    await page.getByRole('button', { name: 'Open the record' }).click();
    await page.locator('#conflict').filter({ hasText: 'Possible wrong patient' }).waitFor();
    const conflict = await page.locator('#conflict').boundingBox();
    const first = await page.locator('#section-allergies').boundingBox();
    check(conflict.y < first.y, 'the warning comes before the record');
    await axe(page, 'the conflict warning');
    await shot(page, '06-demographic-conflict');

    log('break-glass: explained, a reason required, the banner shows it');
    await page.getByRole('button', { name: 'Another patient' }).click();
    await page.fill('#nhs', env('PATIENT_OBJECTING'));
    await page.getByRole('button', { name: 'Open the record' }).click();
    await ready(page);
    const before = await page.locator('#tl-count').innerText();
    check(/withheld/i.test(await page.locator('#sources').innerText()), 'the objection withholds the home region\'s items');
    await page.getByRole('button', { name: /Emergency access/ }).click();
    check(await page.locator('#glass-dialog').isVisible(), 'the dialog opens');
    check((await page.locator('#glass-about').innerText()).includes('emergency treatment'), 'the purpose change is explained');
    check(await page.evaluate(() => document.activeElement.id === 'glass-reason'), 'the reason has focus');
    await axe(page, 'the break-glass dialog');
    await page.fill('#glass-reason', 'too short');
    await page.getByRole('button', { name: 'Break the glass and open the record' }).click();
    check((await page.locator('#glass-error').innerText()).includes('10 characters'), 'a short reason is refused');
    await shot(page, '07-break-glass-dialog');
    await page.fill('#glass-reason', env('GLASS_REASON'));
    await page.getByRole('button', { name: 'Break the glass and open the record' }).click();
    await ready(page);
    const glass = await page.locator('#glass-banner').innerText();
    check(glass.includes('emergency treatment') && glass.includes(env('GLASS_REASON')), `the banner shows break-glass: ${glass}`);
    const after = await page.locator('#tl-count').innerText();
    const count = (t) => Number(/of (\d+)/.exec(t)[1]);
    check(count(after) > count(before), `break-glass shows the withheld items (${before} -> ${after})`);
    await shot(page, '08-break-glass');

    log('signing out clears the record');
    await page.getByRole('button', { name: 'Sign out' }).click();
    check(!(await page.locator('body').innerText()).includes(spaced(env('PATIENT_OBJECTING'))), 'nothing of the patient is left');
    check(errors.length === 0, `no script errors: ${errors}`);
    await context.close();
  }
}

async function pasted(browser) {
  const nhs = env('PATIENT_EVERYWHERE');
  const { page, errors } = await newPage(browser);
  log('a launch for another server is refused, without leaving the page');
  await page.goto(`${viewUrl}?launch=abc123&iss=${encodeURIComponent('https://elsewhere.example/fhir')}`);
  await page.locator('#error').filter({ hasText: 'its own gateway only' }).waitFor();
  check(new URL(page.url()).origin === new URL(viewUrl).origin, 'the page did not go to another server');

  log('no single sign-on: a pasted token');
  await page.goto(viewUrl);
  await page.locator('#token').waitFor();
  check(await page.locator('#sign-in-go').isHidden(), 'no sign-in button without an identity provider');
  await page.fill('#token', 'not-a-token');
  await page.getByRole('button', { name: 'Use this token' }).click();
  await page.locator('#error').filter({ hasText: 'not accepted' }).waitFor();
  await page.fill('#token', env('TOKEN'));
  await page.getByRole('button', { name: 'Use this token' }).click();
  await page.locator('#nhs').waitFor();
  check(await page.locator('#error').isHidden(), 'the earlier error is cleared');
  await page.fill('#nhs', nhs);
  await page.getByRole('button', { name: 'Open the record' }).click();
  await ready(page);
  check((await page.locator('#banner').innerText()).includes(spaced(nhs)), 'the record is shown');
  await page.getByRole('button', { name: 'Sign out' }).click();
  check(await page.locator('#record').isHidden() && (await page.locator('#sections').innerText()) === '', 'signing out clears the record');
  check(errors.length === 0, `no script errors: ${errors}`);
}

async function large(browser) {
  const nhs = env('PATIENT_LARGE');
  const { context, page, errors } = await newPage(browser);
  log('EHR launch of the realistic patient with thousands of items');
  await ehrLaunch(page, nhs, 'CLINICIAN');
  // From the page's return from the provider (a new document) to the record drawn and usable.
  const ms = await page.evaluate(() => performance.getEntriesByName('view-interactive')[0].startTime);
  const items = Number(/of (\d+)/.exec(await page.locator('#tl-count').innerText())[1]);
  check(items >= Number(env('AT_LEAST_ITEMS')), `the whole record is shown (${items} items)`);
  const nodes = await page.evaluate(() => document.getElementsByTagName('*').length);
  console.log(`interactive_ms=${Math.round(ms)} items=${items} dom_nodes=${nodes}`);
  log('the timeline stays quick to filter');
  const t0 = Date.now();
  await page.selectOption('#tl-type', 'Observation');
  await page.locator('#tl-count').filter({ hasText: 'Showing' }).waitFor();
  console.log(`filter_ms=${Date.now() - t0}`);
  await page.getByRole('button', { name: 'Show 100 more' }).click();
  check((await page.locator('#tl-list > li').count()) === 200, 'a hundred more are drawn');
  await shot(page, '09-large-record');
  await axe(page, 'the large record');
  check(errors.length === 0, `no script errors: ${errors}`);
  await context.close();
}

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const scenarios = { states, large, pasted };
  await scenarios[env('SCENARIO')](browser);
  console.log('all steps passed');
} catch (e) {
  console.error(`FAILED at ${step}: ${e.stack || e}`);
  if (current) {
    await current.screenshot({ path: path.join(shots, 'FAILED.png'), fullPage: true }).catch(() => {});
    const body = await current.locator('body').innerText().catch(() => '');
    console.error(`the page was at ${current.url().split('?')[0]}; it said:\n${body.slice(0, 2000)}`);
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
