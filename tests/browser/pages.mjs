// The web pages in Debian's headless Chromium, driven by playwright-core (no browser download):
// axe-core on every page (error states included), the citizen's path by keyboard only, the
// proofs checked in the browser (a one-byte change failing), the same without JavaScript by
// pointer, 320 px reflow, cookie flags, a screenshot of each page.
//
//   node tests/browser/pages.mjs BASE_URL OUT_DIR
//
// The Rust test `it::browser` starts the broker (with a consent to withdraw by keyboard and
// one without JavaScript), runs this, then checks over gRPC that both withdrawals hold.
// Prints one line per check; exits 1 if any failed.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const [base, out] = process.argv.slice(2);
if (!base || !out) {
  console.error('usage: node pages.mjs BASE_URL OUT_DIR');
  process.exit(2);
}
fs.mkdirSync(out, { recursive: true });
const require = createRequire(import.meta.url);
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const failures = [];
const fail = (what) => {
  failures.push(what);
  console.log(`FAIL ${what}`);
};
const ok = (what) => console.log(`ok   ${what}`);
const check = (cond, what) => (cond ? ok(what) : fail(what));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

// axe-core (WCAG 2.1 A and AA, and best practices) on the page as it stands, its screenshot,
// and its reflow at 320 px (RGAA 10.11): no horizontal scroll.
async function audit(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
    }),
  );
  const violations = result.violations.map(
    (v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`,
  );
  check(violations.length === 0, `${name}: axe-core finds no violation ${violations.join('; ')}`);
  await page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });
  const size = page.viewportSize();
  await page.setViewportSize({ width: 320, height: 640 });
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  check(overflow <= 0, `${name}: no horizontal scroll at 320 px (${overflow} px over)`);
  await page.screenshot({ path: path.join(out, `${name}-320px.png`), fullPage: true });
  await page.setViewportSize(size);
}

// Presses Tab until the focused element satisfies `wanted` (given its tag, type, text and
// name), at most `max` times; true if it got there.
async function tabTo(page, wanted, max = 60) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => {
      const e = document.activeElement;
      return e ? { tag: e.tagName, type: e.type || '', text: (e.innerText || e.value || '').trim(), name: e.name || '' } : null;
    });
    if (focused && wanted(focused)) return true;
  }
  return false;
}

// ------------------------------------------------------------------ with JavaScript, keyboard
const keyboard = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'fr-FR' });
const page = await keyboard.newPage();

for (const [route, name] of [['/', 'landing'], ['/accessibilite', 'accessibility'], ['/nulle-part', 'not-found'], ['/citizen', 'citizen-login']]) {
  const answer = await page.goto(base + route);
  check(answer.status() === (name === 'not-found' ? 404 : 200), `${route}: status ${answer.status()}`);
  await audit(page, name);
}

// The skip link is the first stop and leads to the content.
await page.goto(base + '/citizen');
await page.keyboard.press('Tab');
const first = await page.evaluate(() => document.activeElement.innerText.trim());
check(first === 'Aller au contenu', `the first Tab stop is the skip link (${first})`);
await page.keyboard.press('Enter');
check(page.url().endsWith('#contenu'), 'the skip link goes to the content');

// Log in by keyboard: the link, then the identity provider's page.
check(await tabTo(page, (f) => f.text === 'Se connecter'), 'Tab reaches « Se connecter »');
await Promise.all([page.waitForURL(/dev-idp\/authorize/), page.keyboard.press('Enter')]);
await audit(page, 'dev-idp');
// Submitted without a choice: the error is summarised and announced.
check(await tabTo(page, (f) => f.tag === 'BUTTON'), 'Tab reaches the identity provider button');
await Promise.all([page.waitForLoadState('load'), page.keyboard.press('Enter')]);
await page.waitForSelector('[role=alert]');
await audit(page, 'dev-idp-error');
check(await tabTo(page, (f) => f.type === 'radio'), 'Tab reaches the first person');
await page.keyboard.press('Space');
check(await tabTo(page, (f) => f.tag === 'BUTTON'), 'Tab reaches « Se connecter »');
await Promise.all([page.waitForURL(/\/citizen$/), page.keyboard.press('Enter')]);
const heading = await page.textContent('h1');
check(heading.includes('Qui a consulté mes données'), `logged in: ${heading}`);
const rows = await page.locator('caption:has-text("Consultations") >> xpath=.. >> tbody tr').count();
check(rows >= 1, `the history shows the exchanges (${rows})`);
await audit(page, 'citizen');

// « Vérifier »: the newest exchange's inclusion proof and its checkpoint's signature checked in
// the browser, announced in the role=status region; a one-byte change of the entry, or of the
// checkpoint, fails.
async function verifyFirst() {
  await page.evaluate(() => { document.getElementById('verify-status').textContent = ''; });
  await page.locator('button.verify').first().click();
  await page.waitForFunction(() => document.getElementById('verify-status').textContent.length > 0);
  return page.textContent('#verify-status');
}
const flip = (attribute, at) => page.evaluate(([attribute, at]) => {
  const holder = attribute === 'entry' ? document.querySelector('button.verify') : document.getElementById('log-proof');
  const bytes = Uint8Array.from(atob(holder.dataset[attribute]), (c) => c.charCodeAt(0));
  const k = at === 'size' ? bytes.indexOf(10) + 1 : at;
  bytes[k] ^= 1;
  holder.dataset[attribute] = btoa(String.fromCharCode(...bytes));
}, [attribute, at]);
let said = await verifyFirst();
check(said.includes('vérifiée') && !said.includes('échoué'), `« Vérifier » checks the proof in the browser: ${said}`);
await flip('entry', 10);
said = await verifyFirst();
check(said.includes('a échoué'), `an entry changed by one byte fails: ${said}`);
await page.reload();
await flip('checkpoint', 'size');
said = await verifyFirst();
check(said.includes('a échoué') && said.includes('signature'), `a checkpoint changed by one byte fails: ${said}`);
await page.reload();

// Withdraw a consent by keyboard: its link, the confirmation page, the button.
check(await tabTo(page, (f) => f.text.startsWith('Retirer')), 'Tab reaches « Retirer »');
await Promise.all([page.waitForURL(/withdraw$/), page.keyboard.press('Enter')]);
await audit(page, 'consent-withdraw');
check(await tabTo(page, (f) => f.text === 'Confirmer le retrait'), 'Tab reaches « Confirmer le retrait »');
await Promise.all([page.waitForURL(/fait=retire/), page.keyboard.press('Enter')]);
const status = await page.textContent('[role=status]');
check(status.includes('Votre consentement a été retiré.'), `the withdrawal is announced: ${status.trim()}`);
await audit(page, 'citizen-withdrawn');

// The printable statement, and « Je ne reconnais pas cette consultation » (its error state,
// then the report, announced).
await page.goto(base + '/citizen/releve');
check((await page.locator('caption:has-text("Consultations") >> xpath=.. >> tbody tr').count()) >= 1, 'the statement lists the exchanges');
await audit(page, 'statement');
await page.goto(base + '/citizen');
await Promise.all([page.waitForURL(/contest\/\d+$/), page.locator('a.contest').first().click()]);
await audit(page, 'contest');
await Promise.all([page.waitForLoadState('load'), page.click('button:has-text("Envoyer le signalement")')]);
await page.waitForSelector('[role=alert]');
await audit(page, 'contest-error');
await page.check('#raison-1');
await Promise.all([page.waitForURL(/fait=signale/), page.click('button:has-text("Envoyer le signalement")')]);
const reported = await page.textContent('[role=status]');
check(reported.includes('Votre signalement est inscrit au journal'), `the report is announced: ${reported.trim()}`);

// The mandate's revocation page (revoked below without JavaScript).
const revokeLink = page.locator('a:has-text("Révoquer")');
check((await revokeLink.count()) === 1, 'the mandate is listed with « Révoquer »');
await Promise.all([page.waitForURL(/revoke$/), revokeLink.click()]);
await audit(page, 'mandate-revoke');

const cookies = await keyboard.cookies();
const session = cookies.find((c) => c.name === 'unefois_session');
check(session && session.httpOnly && session.sameSite === 'Lax', `session cookie HttpOnly, SameSite=Lax (${JSON.stringify(session)})`);
check(cookies.every((c) => !c.value.includes('test')), 'no person in a cookie');
await keyboard.close();

// -------------------------------------------------------------- without JavaScript, pointer
const plain = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1280, height: 800 }, locale: 'fr-FR' });
const noJs = await plain.newPage();
await noJs.goto(base + '/citizen');
await Promise.all([noJs.waitForURL(/dev-idp\/authorize/), noJs.click('text=Se connecter')]);
await noJs.check('input[value="test:alice"]');
await Promise.all([noJs.waitForURL(/\/citizen$/), noJs.click('button:has-text("Se connecter")')]);
check((await noJs.textContent('h1')).includes('Qui a consulté mes données'), 'without JavaScript: logged in, history shown');
const links = noJs.locator('a:has-text("Retirer")');
check((await links.count()) >= 1, 'without JavaScript: a consent left to withdraw');
await Promise.all([noJs.waitForURL(/withdraw$/), links.first().click()]);
await Promise.all([noJs.waitForURL(/fait=retire/), noJs.click('button:has-text("Confirmer le retrait")')]);
check((await noJs.textContent('[role=status]')).includes('retiré'), 'without JavaScript: consent withdrawn');
await Promise.all([noJs.waitForURL(/revoke$/), noJs.click('a:has-text("Révoquer")')]);
await Promise.all([noJs.waitForURL(/fait=mandat-revoque/), noJs.click('button:has-text("Confirmer la révocation")')]);
check((await noJs.textContent('[role=status]')).includes('mandat a été révoqué'), 'without JavaScript: mandate revoked');
await noJs.screenshot({ path: path.join(out, 'citizen-no-javascript.png'), fullPage: true });
await plain.close();

await browser.close();
console.log(`${failures.length === 0 ? 'all browser checks passed' : `${failures.length} browser check(s) failed`}`);
process.exit(failures.length === 0 ? 0 : 1);
