// The web pages in Debian's headless Chromium, driven by playwright-core (no browser download):
// axe-core on every page (error states included), the citizen's path by keyboard only, the
// proofs checked in the browser (a one-byte change failing), the same without JavaScript by
// pointer; the mediator's desk by keyboard (agent, person present, mandate, acting under it,
// revocation) and without JavaScript (a mandate with its signed document, a consent, both
// then on the person's page); the auditors' console by keyboard, its proofs checked in the
// browser (a one-byte change failing) and offline by the downloaded verifier; 320 px
// reflow, cookie flags, a screenshot of each page.
//
//   node tests/browser/pages.mjs BASE_URL OUT_DIR
//
// The Rust test `it::browser` starts the broker (with a consent to withdraw by keyboard and
// one without JavaScript), runs this, then checks over gRPC that both withdrawals hold and
// that the consent recorded at the mediator's desk (without JavaScript) is in force.
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
// The entry must also record what its row shows: a row whose time or outcome is not the
// entry's (a page showing one exchange and proving another) fails, naming what differs.
await page.evaluate(() => {
  const time = document.querySelector('button.verify').closest('tr').querySelector('time');
  const shown = new Date(time.getAttribute('datetime'));
  time.setAttribute('datetime', new Date(shown.getTime() + 3600e3).toISOString().replace(/\.\d+/, ''));
});
said = await verifyFirst();
check(said.includes('a échoué') && said.includes('la date'), `a row shown at another time fails: ${said}`);
await page.reload();
await page.evaluate(() => {
  const button = document.querySelector('button.verify');
  button.dataset.outcome = button.dataset.outcome === 'granted' ? 'denied' : 'granted';
});
said = await verifyFirst();
check(said.includes('a échoué') && said.includes('le résultat') && !said.includes('la date'),
  `a row shown with another outcome fails: ${said}`);
await page.reload();
await flip('checkpoint', 'size');
said = await verifyFirst();
check(said.includes('a échoué') && said.includes('signature'), `a checkpoint changed by one byte fails: ${said}`);
await page.reload();
// A verifier key that names the log's key id over another key, and a checkpoint that other
// key signed under that id: the key is not the log's, whatever id it names (C2SP key ids).
await page.evaluate(async () => {
  const log = document.getElementById('log-proof');
  const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const [name, id] = log.dataset.vkey.split('+');
  const other = await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify']);
  const pub = new Uint8Array(await crypto.subtle.exportKey('raw', other.publicKey));
  log.dataset.vkey = `${name}+${id}+${b64(Uint8Array.of(1, ...pub))}`;
  const note = new TextDecoder().decode(Uint8Array.from(atob(log.dataset.checkpoint), (c) => c.charCodeAt(0)));
  const text = note.slice(0, note.indexOf('\n\n') + 1);
  const sig = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, other.privateKey, new TextEncoder().encode(text)));
  const idBytes = id.match(/../g).map((h) => parseInt(h, 16));
  const forged = `${text}\n\u2014 ${name} ${b64(Uint8Array.of(...idBytes, ...sig))}\n`;
  log.dataset.checkpoint = b64(new TextEncoder().encode(forged));
});
said = await verifyFirst();
check(said.includes('a échoué') && said.includes('identifiant'), `a key naming another's id fails: ${said}`);
await page.reload();

// Withdraw a consent by keyboard: its link, the confirmation page, the button.
check(await tabTo(page, (f) => f.text.startsWith('Retirer')), 'Tab reaches « Retirer »');
await Promise.all([page.waitForURL(/withdraw$/), page.keyboard.press('Enter')]);
await audit(page, 'consent-withdraw');
check(await tabTo(page, (f) => f.text === 'Confirmer le retrait'), 'Tab reaches « Confirmer le retrait »');
await Promise.all([page.waitForURL(/\/citizen$/), page.keyboard.press('Enter')]);
const status = await page.textContent('main [role=status]');
check(status.includes('Votre consentement a été retiré.'), `the withdrawal is announced: ${status.trim()}`);
await audit(page, 'citizen-withdrawn');

// The history's filters: one organisation, then a filter that is not one (its error state).
await page.goto(base + '/citizen');
await page.selectOption('#org', 'mairie-lyon');
await Promise.all([page.waitForURL(/org=mairie-lyon/), page.click('button:has-text("Filtrer")')]);
check((await page.locator('a.contest').count()) >= 1, 'the history filtered by organisation');
await audit(page, 'citizen-filtered');
await page.goto(base + '/citizen?org=nulle-part');
await page.waitForSelector('[role=alert]');
await audit(page, 'citizen-filter-error');

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
await Promise.all([page.waitForURL(/\/citizen$/), page.click('button:has-text("Envoyer le signalement")')]);
const reported = await page.textContent('main [role=status]');
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
await Promise.all([noJs.waitForURL(/\/citizen$/), noJs.click('button:has-text("Confirmer le retrait")')]);
check((await noJs.textContent('main [role=status]')).includes('retiré'), 'without JavaScript: consent withdrawn');
await Promise.all([noJs.waitForURL(/revoke$/), noJs.click('a:has-text("Révoquer")')]);
await Promise.all([noJs.waitForURL(/\/citizen$/), noJs.click('button:has-text("Confirmer la révocation")')]);
check((await noJs.textContent('main [role=status]')).includes('mandat a été révoqué'), 'without JavaScript: mandate revoked');
await noJs.screenshot({ path: path.join(out, 'citizen-no-javascript.png'), fullPage: true });
await plain.close();

// ------------------------------------------------ the mediator's desk, with JavaScript, keyboard
const deskContext = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'fr-FR' });
const desk = await deskContext.newPage();
await desk.goto(base + '/desk');
await audit(desk, 'desk-login');
// One factor only: refused, and said why.
await Promise.all([desk.waitForURL(/dev-idp\/agents\/authorize/), desk.click('a:has-text("Se connecter (agents)")')]);
await audit(desk, 'dev-idp-agents');
await desk.check('#agent-0');
await desk.check('#facteurs-un');
await Promise.all([desk.waitForLoadState('load'), desk.click('button:has-text("Se connecter")')]);
check((await desk.textContent('h1')).includes('Second facteur exigé'), 'an agent without a second factor is refused');
await audit(desk, 'desk-second-factor');
// By keyboard, two factors: the agent, then the person present (Bob).
await desk.goto(base + '/desk');
check(await tabTo(desk, (f) => f.text === 'Se connecter (agents)'), 'Tab reaches « Se connecter (agents) »');
await Promise.all([desk.waitForURL(/dev-idp\/agents\/authorize/), desk.keyboard.press('Enter')]);
check(await tabTo(desk, (f) => f.type === 'radio' && f.name === 'agent'), 'Tab reaches the first agent');
await desk.keyboard.press('Space');
check(await tabTo(desk, (f) => f.tag === 'BUTTON'), 'Tab reaches the agents\' « Se connecter »');
await Promise.all([desk.waitForURL(/\/desk$/), desk.keyboard.press('Enter')]);
check((await desk.textContent('header')).includes('Marie Dupont'), 'the agent is logged in at the desk');
await audit(desk, 'desk');
check(await tabTo(desk, (f) => f.text === 'La personne se connecte'), 'Tab reaches « La personne se connecte »');
await Promise.all([desk.waitForURL(/dev-idp\/authorize/), desk.keyboard.press('Enter')]);
check(await tabTo(desk, (f) => f.type === 'radio'), 'Tab reaches the first person');
await desk.keyboard.press('ArrowDown');
check(await tabTo(desk, (f) => f.tag === 'BUTTON'), 'Tab reaches the person\'s « Se connecter »');
await Promise.all([desk.waitForURL(/\/desk$/), desk.keyboard.press('Enter')]);
check((await desk.textContent('main')).includes('Bob Durand'), 'the person present is named');
await audit(desk, 'desk-person');
// The mandate: sent empty (every error summarised), then filled by keyboard.
check(await tabTo(desk, (f) => f.text === 'Créer un mandat'), 'Tab reaches « Créer un mandat »');
await Promise.all([desk.waitForURL(/mandates\/new$/), desk.keyboard.press('Enter')]);
await audit(desk, 'desk-mandate-new');
check(await tabTo(desk, (f) => f.text === 'Créer le mandat'), 'Tab reaches « Créer le mandat »');
await Promise.all([desk.waitForLoadState('load'), desk.keyboard.press('Enter')]);
await desk.waitForSelector('[role=alert]');
check((await desk.textContent('[role=alert]')).includes('4 erreurs'), 'the empty mandate form says its 4 errors');
await audit(desk, 'desk-mandate-error');
check(await tabTo(desk, (f) => f.name === 'finalite'), 'Tab reaches the first purpose');
await desk.keyboard.press('Space');
check(await tabTo(desk, (f) => f.name === 'duree'), 'Tab reaches the durations');
await desk.keyboard.press('Space');
check(await tabTo(desk, (f) => f.name === 'empreinte'), 'Tab reaches the document\'s digest');
await desk.keyboard.type('9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08');
check(await tabTo(desk, (f) => f.name === 'informee'), 'Tab reaches « Personne informée »');
await desk.keyboard.press('Space');
check(await tabTo(desk, (f) => f.text === 'Créer le mandat'), 'Tab reaches « Créer le mandat » again');
await Promise.all([desk.waitForURL(/mandates\/[0-9a-f-]+$/), desk.keyboard.press('Enter')]);
check((await desk.textContent('h1')).includes('Mandat n°'), 'the mandate is created and shown to print');
check((await desk.textContent('.acting')).includes('Vous agissez pour Bob Durand'), 'the banner says for whom the agent acts');
await audit(desk, 'desk-mandate');
// Acting under it: the energy-aid form pre-filled, the history.
check(await tabTo(desk, (f) => f.text === 'Agir pour la personne'), 'Tab reaches « Agir pour la personne »');
await Promise.all([desk.waitForURL(/\/desk\/agir$/), desk.keyboard.press('Enter')]);
await audit(desk, 'desk-acting');
check(await tabTo(desk, (f) => f.text === 'Pré-remplir'), 'Tab reaches « Pré-remplir »');
await Promise.all([desk.waitForURL(/agir\/formulaire$/), desk.keyboard.press('Enter')]);
check((await desk.textContent('main')).includes('41250'), 'the pre-filled form shows the value and its source');
await audit(desk, 'desk-prefilled');
await desk.goto(base + '/desk/agir/historique');
await audit(desk, 'desk-history');
// Revoked by keyboard.
await desk.goto(base + '/desk');
check(await tabTo(desk, (f) => f.text.startsWith('Révoquer')), 'Tab reaches « Révoquer »');
await Promise.all([desk.waitForURL(/revoke$/), desk.keyboard.press('Enter')]);
await audit(desk, 'desk-mandate-revoke');
check(await tabTo(desk, (f) => f.text === 'Confirmer la révocation'), 'Tab reaches « Confirmer la révocation »');
await Promise.all([desk.waitForURL(/\/desk$/), desk.keyboard.press('Enter')]);
check((await desk.textContent('main [role=status]')).includes('Le mandat est révoqué'), 'the revocation is announced');
const deskCookies = await deskContext.cookies();
const deskSession = deskCookies.find((c) => c.name === 'unefois_desk');
check(deskSession && deskSession.httpOnly && deskSession.sameSite === 'Lax', `desk cookie HttpOnly, SameSite=Lax (${JSON.stringify(deskSession)})`);
await deskContext.close();

// ------------------------------------------- the desk without JavaScript: a mandate, a consent
const plainDesk = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1280, height: 800 }, locale: 'fr-FR' });
const nd = await plainDesk.newPage();
await nd.goto(base + '/desk');
await Promise.all([nd.waitForURL(/dev-idp\/agents\/authorize/), nd.click('a:has-text("Se connecter (agents)")')]);
await nd.check('#agent-1');
await Promise.all([nd.waitForURL(/\/desk$/), nd.click('button:has-text("Se connecter")')]);
await Promise.all([nd.waitForURL(/dev-idp\/authorize/), nd.click('a:has-text("La personne se connecte")')]);
await nd.check('input[value="test:carol"]');
await Promise.all([nd.waitForURL(/\/desk$/), nd.click('button:has-text("Se connecter")')]);
await Promise.all([nd.waitForURL(/mandates\/new$/), nd.click('a:has-text("Créer un mandat")')]);
await nd.check('input[value="tarification_cantine"]');
await nd.check('#duree-1');
await nd.setInputFiles('#document', { name: 'mandat-signe.pdf', mimeType: 'application/pdf', buffer: Buffer.from('%PDF-1.4 mandat signé par Carole Petit') });
await nd.check('#informee');
await Promise.all([nd.waitForURL(/mandates\/[0-9a-f-]+$/), nd.click('button:has-text("Créer le mandat")')]);
check((await nd.textContent('main')).includes('Carole Petit donne mandat'), 'without JavaScript: the mandate is created, the signed document attached');
await nd.screenshot({ path: path.join(out, 'desk-mandate-no-javascript.png'), fullPage: true });
await Promise.all([nd.waitForURL(/\/desk\/agir$/), nd.click('a:has-text("Agir pour la personne")')]);
await Promise.all([nd.waitForResponse((r) => r.url().endsWith('/desk/agir') && r.request().method() === 'GET'), nd.click('button:has-text("Enregistrer le consentement")')]);
await nd.waitForSelector('main [role=status] p');
check((await nd.textContent('main [role=status]')).includes('Le consentement est enregistré'), 'without JavaScript: a consent recorded under the mandate');
// On Carole's own page: the mandate, with the agent's name, and the consent.
await nd.goto(base + '/citizen');
await Promise.all([nd.waitForURL(/dev-idp\/authorize/), nd.click('text=Se connecter')]);
await nd.check('input[value="test:carol"]');
await Promise.all([nd.waitForURL(/\/citizen$/), nd.click('button:has-text("Se connecter")')]);
const carol = await nd.textContent('main');
check(carol.includes('Karim Benali (karim.benali)'), 'the mandate made at the desk shows on the person\'s page, with the agent');
check(carol.includes('Ville de Lyon'), 'the consent recorded at the desk shows on the person\'s page');
await nd.screenshot({ path: path.join(out, 'citizen-after-desk.png'), fullPage: true });
await plainDesk.close();

// ------------------------------------------------- the auditors' console, keyboard and proofs
const auditContext = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'fr-FR' });
const au = await auditContext.newPage();
await au.goto(base + '/audit');
await audit(au, 'audit-login');
check(await tabTo(au, (f) => f.text === 'Se connecter (contrôleurs)'), 'Tab reaches « Se connecter (contrôleurs) »');
await Promise.all([au.waitForURL(/dev-idp\/agents\/authorize/), au.keyboard.press('Enter')]);
check(await tabTo(au, (f) => f.type === 'radio' && f.name === 'agent'), 'Tab reaches the first agent');
await au.keyboard.press('ArrowDown');
await au.keyboard.press('ArrowDown');
check(await tabTo(au, (f) => f.tag === 'BUTTON'), 'Tab reaches the agents\' « Se connecter »');
await Promise.all([au.waitForURL(/\/audit$/), au.keyboard.press('Enter')]);
check((await au.textContent('header')).includes('Claire Roux'), 'the auditor is logged in at the console');
await audit(au, 'audit');
// The exchanges, chosen and asked for by keyboard.
check(await tabTo(au, (f) => f.name === 'genre'), 'Tab reaches the kind of event');
await au.keyboard.press('ArrowDown');
check(await tabTo(au, (f) => f.text === 'Afficher les événements'), 'Tab reaches « Afficher les événements »');
await Promise.all([au.waitForURL(/audit\/evenements$/), au.keyboard.press('Enter')]);
const exchanges = await au.locator('caption:has-text("Événements") >> xpath=.. >> tbody tr').count();
check(exchanges >= 1, `the console lists the exchanges (${exchanges})`);
await audit(au, 'audit-events');
// « Vérifier » on a row: the entry of its number, included in the log the pinned key signed,
// and recording what the row shows; a row the entry does not record (a made-up participant
// and outcome, another time) fails, naming what differs.
const verifyRow = async () => {
  await au.waitForSelector('tbody button.verify:not([hidden])');
  await au.evaluate(() => { document.getElementById('verify-status').textContent = ''; });
  await au.click('tbody button.verify >> nth=0');
  await au.waitForFunction(() => document.getElementById('verify-status').textContent.length > 0);
  return au.textContent('#verify-status');
};
let rowSaid = await verifyRow();
check(rowSaid.includes('vérifiée') && rowSaid.includes('telle que sa ligne la montre'), `« Vérifier » on a row verifies its entry: ${rowSaid}`);
await au.evaluate(() => {
  const button = document.querySelector('tbody button.verify');
  button.dataset.outcome = button.dataset.outcome === 'granted' ? 'denied' : 'granted';
  button.dataset.participant = 'made-up';
});
rowSaid = await verifyRow();
check(rowSaid.includes('a échoué') && rowSaid.includes('le participant') && rowSaid.includes('le résultat') && !rowSaid.includes('la date'),
  `a row its entry does not record fails, naming what differs: ${rowSaid}`);
await au.reload();
await au.evaluate(() => {
  const time = document.querySelector('tbody button.verify').closest('tr').querySelector('time');
  const shown = new Date(time.getAttribute('datetime'));
  time.setAttribute('datetime', new Date(shown.getTime() + 3600e3).toISOString().replace(/\.\d+/, ''));
});
rowSaid = await verifyRow();
check(rowSaid.includes('a échoué') && rowSaid.includes('la date'), `a row shown at another time fails: ${rowSaid}`);
// Every kind of row the log begins with verifies as shown (consents, mandates, reads, reports,
// the broker's own entries): the page and the script read an entry's fields alike.
const kinds = new Set();
const unverified = [];
for (const [genre, most] of [['', 50], ['audit_read', 3]]) {
  await au.goto(base + '/audit');
  await au.selectOption('#genre', genre);
  await Promise.all([au.waitForURL(/audit\/evenements$/), au.click('button:has-text("Afficher les événements")')]);
  await au.waitForSelector('tbody button.verify:not([hidden])');
  const rows = Math.min(most, await au.locator('tbody button.verify').count());
  for (let i = 0; i < rows; i += 1) {
    const button = au.locator('tbody button.verify').nth(i);
    kinds.add(await button.getAttribute('data-kind'));
    await au.evaluate(() => { document.getElementById('verify-status').textContent = ''; });
    await button.click();
    await au.waitForFunction(() => document.getElementById('verify-status').textContent.length > 0);
    const said = await au.textContent('#verify-status');
    if (!said.includes('vérifiée')) unverified.push(said);
  }
}
check(unverified.length === 0 && kinds.has('audit_read') && kinds.size >= 5, `every row verifies as shown (${[...kinds].join(', ')}): ${unverified.join(' | ')}`);
// Without JavaScript the rows' « Vérifier » (hidden until the script can check) is not shown:
// the stylesheet's `display` on buttons used to override `hidden`, leaving a button that did
// nothing on every row.
const plainAudit = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1280, height: 800 }, locale: 'fr-FR' });
const noJsAudit = await plainAudit.newPage();
await noJsAudit.goto(base + '/audit');
await Promise.all([noJsAudit.waitForURL(/dev-idp\/agents\/authorize/), noJsAudit.click('text=Se connecter (contrôleurs)')]);
await noJsAudit.locator('input[name=agent]').nth(2).check();
await Promise.all([noJsAudit.waitForURL(/\/audit$/), noJsAudit.click('button:has-text("Se connecter")')]);
await Promise.all([noJsAudit.waitForURL(/audit\/evenements$/), noJsAudit.click('button:has-text("Afficher les événements")')]);
const deadButtons = await noJsAudit.locator('tbody button.verify:visible').count();
const dossiers = await noJsAudit.locator('tbody a:has-text("Dossier"):visible').count();
check(deadButtons === 0 && dossiers >= 1, `without JavaScript: no « Vérifier » shown on the console's rows (${deadButtons}), the proof bundles are (${dossiers})`);
await plainAudit.close();
// A person that is not one: the error state.
await au.goto(base + '/audit');
await au.fill('#personne', 'alice');
await Promise.all([au.waitForLoadState('load'), au.click('button:has-text("Afficher les événements")')]);
await au.waitForSelector('[role=alert]');
await audit(au, 'audit-error');
await au.goto(base + '/audit/signalements');
check((await au.locator('caption:has-text("Signalements") >> xpath=.. >> tbody tr').count()) >= 1, 'the citizen\'s report is listed for auditors');
await audit(au, 'audit-contests');
// The proofs, in the browser: the latest checkpoint; kept, then consistent with a later one;
// changed by one byte, not; an entry's inclusion; a key that is not the log's.
await au.goto(base + '/audit/preuves');
await audit(au, 'audit-proofs');
const kept = await au.textContent('#latest-checkpoint');
const vkey = await au.inputValue('#pinned-key');
await au.click('#check-checkpoint');
await au.waitForFunction(() => document.getElementById('checkpoint-status').textContent.length > 0);
check((await au.textContent('#checkpoint-status')).includes('Point de contrôle vérifié'), 'the latest checkpoint verifies against the pinned key');
await au.goto(base + '/audit/evenements');
await au.goto(base + '/audit/preuves');
const consistency = async (note) => {
  await au.fill('#kept-checkpoint', note);
  await au.evaluate(() => { document.getElementById('consistency-status').textContent = ''; });
  await au.click('button:has-text("Vérifier la cohérence")');
  await au.waitForFunction(() => document.getElementById('consistency-status').textContent.length > 0);
  return au.textContent('#consistency-status');
};
let said2 = await consistency(kept);
check(said2.includes('Cohérence vérifiée'), `a kept checkpoint is consistent with the latest: ${said2}`);
const lines = kept.split('\n');
const root = Uint8Array.from(atob(lines[2]), (c) => c.charCodeAt(0));
root[0] ^= 1;
lines[2] = btoa(String.fromCharCode(...root));
said2 = await consistency(lines.join('\n'));
check(said2.includes('a échoué'), `a kept checkpoint changed by one byte fails: ${said2}`);
// The browser's RFC 9162 consistency check agrees with the broker's trees at every shape of
// first tree (a power of two or not, one leaf short, the same tree).
const latestSize = Number(kept.split('\n')[1]) + 1;
const sizes = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, latestSize - 1, latestSize].filter((n) => n >= 1 && n <= latestSize);
const shapes = await au.evaluate(async (sizes) => {
  const P = UnefoisProofs;
  const vkey = document.getElementById('log-proof').dataset.vkey;
  const said = [];
  for (const n of sizes) {
    const answer = await (await fetch(`/audit/api/coherence?premier=${n}`)).json();
    const first = await P.checkpoint(answer.first_checkpoint, vkey);
    const second = await P.checkpoint(answer.checkpoint, vkey);
    const proof = answer.proof.map(P.fromB64);
    const good = await P.consistent(first.size, first.root, second.size, second.root, proof);
    const wrong = Uint8Array.from(first.root);
    wrong[0] ^= 1;
    const bad = await P.consistent(first.size, wrong, second.size, second.root, proof);
    said.push(`${n}->${second.size}:${good && !bad ? 'ok' : 'FAILED'}`);
  }
  return said;
}, sizes);
check(shapes.every((s) => s.endsWith(':ok')), `consistency checked in the browser at every shape: ${shapes.join(' ')}`);
await au.fill('#entry-index', '3');
await au.click('button:has-text("Vérifier l\'inclusion")');
await au.waitForFunction(() => document.getElementById('inclusion-status').textContent.length > 0);
said2 = await au.textContent('#inclusion-status');
check(said2.includes('vérifiée'), `an entry's inclusion verifies in the browser: ${said2}`);
// An empty or non-integer number checks no entry (an empty field is not entry n° 0); the
// form's own checks set aside, the browser's would stop « 1.5 » and « -1 » first.
await au.evaluate(() => { document.getElementById('inclusion-form').noValidate = true; });
for (const typed of ['', '1.5', '-1']) {
  await au.fill('#entry-index', typed);
  await au.evaluate(() => { document.getElementById('inclusion-status').textContent = ''; });
  await au.click('button:has-text("Vérifier l\'inclusion")');
  await au.waitForFunction(() => document.getElementById('inclusion-status').textContent.length > 0);
  said2 = await au.textContent('#inclusion-status');
  check(said2.includes('Saisissez le numéro') && !said2.includes('vérifiée') && !said2.includes('n° 0'),
    `the entry number « ${typed} » is refused: ${said2}`);
}
// One character of the key's base64 changed, never to itself (the key is new each run).
const changed = vkey.length - 3;
const otherKey = vkey.slice(0, changed) + (vkey[changed] === 'A' ? 'B' : 'A') + vkey.slice(changed + 1);
await au.fill('#pinned-key', otherKey);
await au.evaluate(() => { document.getElementById('checkpoint-status').textContent = ''; });
await au.click('#check-checkpoint');
await au.waitForFunction(() => document.getElementById('checkpoint-status').textContent.length > 0);
said2 = await au.textContent('#checkpoint-status');
check(said2.includes('a échoué'), `another key fails: ${said2}`);
// The key pinned stays pinned on the events' pages (it went back to the broker's own key at
// each page, and « Vérifier » then said « signé par la clé épinglée » under it).
await au.goto(base + '/audit/evenements');
check((await au.inputValue('#pinned-key')) === otherKey, 'the pinned key is kept from the proofs to the events');
rowSaid = await verifyRow();
check(rowSaid.includes('a échoué'), `« Vérifier » under the key pinned on another page fails: ${rowSaid}`);
await au.fill('#pinned-key', vkey);
rowSaid = await verifyRow();
check(rowSaid.includes('vérifiée') && rowSaid.includes('la clé épinglée'), `under the key typed in, the broker's own, pinned: ${rowSaid}`);
// A key nobody typed is the page's, said as such.
await au.evaluate(() => sessionStorage.clear());
await au.reload();
rowSaid = await verifyRow();
check(rowSaid.includes('vérifiée') && rowSaid.includes('non épinglée'), `under the page's own key, said as such: ${rowSaid}`);
// The offline verifier, from a file, with the bundle of an entry.
const verifierFile = path.join(out, 'unefois-verificateur.html');
fs.writeFileSync(verifierFile, await (await auditContext.request.get(base + '/audit/verificateur.html')).body());
const bundle = await (await auditContext.request.get(base + '/audit/dossier/3')).text();
const offline = await auditContext.newPage();
await offline.goto('file://' + path.resolve(verifierFile));
await audit(offline, 'offline-verifier');
const offlineCheck = async (key, text) => {
  await offline.fill('#key', key);
  await offline.fill('#bundle-text', text);
  await offline.evaluate(() => { document.getElementById('status').textContent = ''; });
  await offline.click('button:has-text("Vérifier le dossier")');
  await offline.waitForFunction(() => document.getElementById('status').textContent.length > 0);
  return offline.textContent('#status');
};
said2 = await offlineCheck(vkey, bundle);
check(said2.includes('Dossier vérifié'), `the offline verifier checks a bundle without the broker: ${said2}`);
const tampered = JSON.parse(bundle);
const entry = Uint8Array.from(atob(tampered.entries[0].entry), (c) => c.charCodeAt(0));
entry[10] ^= 1;
tampered.entries[0].entry = btoa(String.fromCharCode(...entry));
said2 = await offlineCheck(vkey, JSON.stringify(tampered));
check(said2.includes('a échoué'), `an entry changed by one byte fails offline: ${said2}`);
said2 = await offlineCheck(vkey, JSON.stringify({ ...JSON.parse(bundle), entries: [] }));
check(said2.includes('a échoué'), `a bundle with nothing to check is not « vérifié »: ${said2}`);
// Entries that are not a list are refused, even beside an older checkpoint that is consistent.
const coherence = await (await auditContext.request.get(base + '/audit/api/coherence?premier=1')).json();
const notAList = {
  format: 'unefois-proof-bundle/v1', checkpoint: coherence.checkpoint, entries: { 0: JSON.parse(bundle).entries[0] },
  older_checkpoint: coherence.first_checkpoint, consistency_proof: coherence.proof,
};
said2 = await offlineCheck(vkey, JSON.stringify({ ...notAList, entries: [] }));
check(said2.includes('Dossier vérifié'), `a bundle with an older checkpoint and no entry verifies: ${said2}`);
said2 = await offlineCheck(vkey, JSON.stringify(notAList));
check(said2.includes('a échoué') && said2.includes('entries') && !said2.includes('Dossier vérifié'),
  `a bundle whose entries are not a list fails: ${said2}`);
said2 = await offlineCheck('', bundle);
check(said2.includes('clé du journal'), `the offline verifier asks for the published key: ${said2}`);
// Forms sent from this logged-in browser without the session's CSRF token, or from another
// origin, are refused in every space (403), and nothing is done.
const csrf = await (async () => {
  await au.goto(base + '/audit');
  return au.inputValue('input[name=csrf]');
})();
for (const [route, form] of [['/audit/evenements', { genre: 'exchange' }], ['/audit/logout', {}]]) {
  const without = await auditContext.request.post(base + route, { form, headers: { Origin: base }, maxRedirects: 0 });
  check(without.status() === 403, `POST ${route} without a CSRF token: ${without.status()}`);
}
const foreign = await auditContext.request.post(base + '/audit/evenements', {
  form: { csrf, genre: 'exchange' }, headers: { Origin: 'https://evil.example' }, maxRedirects: 0,
});
check(foreign.status() === 403, `POST with the CSRF token from a foreign origin: ${foreign.status()}`);
// The session's end is said before it comes, next to « Prolonger la session », then when it
// comes (the page's clock moved forward).
const timed = await auditContext.newPage();
await timed.clock.install();
await timed.goto(base + '/audit');
const endsAt = Number(await timed.getAttribute('form.logout', 'data-ends')) * 1000;
check(endsAt > Date.now(), 'the page knows when the session ends');
await timed.clock.fastForward(Math.max(0, endsAt - Date.now() - 60 * 1000));
await timed.waitForFunction(() => document.getElementById('session-status').textContent.length > 0);
check((await timed.textContent('#session-status')).includes('moins de deux minutes'), 'the session\'s end is announced two minutes before');
await audit(timed, 'session-ending');
await timed.clock.fastForward(2 * 60 * 1000);
await timed.waitForFunction(() => document.getElementById('session-status').textContent.includes('a pris fin'));
ok('the session\'s end is announced when it comes');
await timed.close();
const auditCookie = (await auditContext.cookies()).find((c) => c.name === 'unefois_audit');
check(auditCookie && auditCookie.httpOnly && auditCookie.sameSite === 'Lax', 'console cookie HttpOnly, SameSite=Lax');
await auditContext.close();

await browser.close();
console.log(`${failures.length === 0 ? 'all browser checks passed' : `${failures.length} browser check(s) failed`}`);
process.exit(failures.length === 0 ? 0 : 1);
