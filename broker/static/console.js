// The auditors' console's proof checks, in the auditor's browser (proofs.js): the latest
// checkpoint against the log key the auditor pins (the federation operator's published one,
// not only the one this broker shows), the consistency of a checkpoint they kept with the
// latest one, and the inclusion of a chosen entry (the proofs page); « Vérifier » on a row of
// the events, the entry of its number included in the log the pinned key signed and
// recording what the row shows (its time to the second, and the codes its words are named
// from), naming what differs. Each result is said in its role=status region. The console
// works without it; only these checks need it.
'use strict';

(function () {
  const log = document.getElementById('log-proof');
  const pinned = document.getElementById('pinned-key');
  if (!log || !pinned || !window.crypto || !crypto.subtle || typeof UnefoisProofs === 'undefined') {
    return;
  }
  const P = UnefoisProofs;
  const say = (id, text) => {
    document.getElementById(id).textContent = text;
  };
  const latestNote = () => new TextDecoder().decode(P.fromB64(log.dataset.checkpoint));
  // The key the auditor pins is kept for the session's tab (sessionStorage): from one page of
  // events to the next, and between the proofs and the events, the checks go on under it,
  // not back under the key this broker gives. Said as it is: pinned, or the service's own.
  // Pinned: a key the auditor typed in (here or on an earlier page), even the broker's own
  // (the operator's published key is the broker's when all is well); else the page's.
  const PINNED = 'unefois-cle-epinglee';
  let typed = false;
  try {
    const kept = sessionStorage.getItem(PINNED);
    if (kept) {
      pinned.value = kept;
      typed = true;
    }
  } catch (e) { /* storage refused: the field as the page gives it */ }
  pinned.addEventListener('input', () => {
    typed = pinned.value.trim() !== '';
    try {
      if (typed) sessionStorage.setItem(PINNED, pinned.value.trim());
      else sessionStorage.removeItem(PINNED);
    } catch (e) { /* the field still holds it on this page */ }
  });
  // Logging out ends it: the next person at this browser pins their own.
  for (const form of document.querySelectorAll('form[action="/audit/logout"]')) {
    form.addEventListener('submit', () => {
      try {
        sessionStorage.removeItem(PINNED);
      } catch (e) { /* nothing kept */ }
    });
  }
  const byKey = () => (typed
    ? 'la clé épinglée'
    : 'la clé que donne ce service (non épinglée : comparez-la à celle que publie l\u2019opérateur)');
  const get = async (url) => {
    const answer = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    let body;
    try {
      body = await answer.json();
    } catch (e) {
      throw new Error(`réponse inattendue du service (${answer.status}) : réessayez, ou reconnectez-vous`);
    }
    if (!answer.ok) throw new Error(body.erreur || `réponse ${answer.status}`);
    return body;
  };

  async function checkLatest() {
    try {
      const { size } = await P.checkpoint(latestNote(), pinned.value);
      say('checkpoint-status', `Point de contrôle vérifié : signé par ${byKey()}, ${size} inscriptions.`);
    } catch (e) {
      say('checkpoint-status', `La vérification a échoué : ${e.message}.`);
    }
  }

  async function checkConsistency(event) {
    event.preventDefault();
    try {
      const kept = document.getElementById('kept-checkpoint').value.replace(/\r\n/g, '\n').trim() + '\n';
      const older = await P.checkpoint(kept, pinned.value);
      const answer = await get(`/audit/api/coherence?premier=${older.size}`);
      const newer = await P.checkpoint(answer.checkpoint, pinned.value);
      const proof = answer.proof.map(P.fromB64);
      if (!(await P.consistent(older.size, older.root, newer.size, newer.root, proof))) {
        throw new Error('la preuve de cohérence ne relie pas les deux points de contrôle : le journal a été réécrit');
      }
      say('consistency-status', `Cohérence vérifiée : le journal de ${newer.size} inscriptions prolonge celui de ${older.size} inscriptions sans rien en changer.`);
    } catch (e) {
      say('consistency-status', `La vérification a échoué : ${e.message}.`);
    }
  }

  async function checkInclusion(event) {
    event.preventDefault();
    // An empty field is no entry n° 0 (Number('') is 0).
    const typed = document.getElementById('entry-index').value.trim();
    const index = typed === '' ? NaN : Number(typed);
    if (!Number.isSafeInteger(index) || index < 0) {
      say('inclusion-status', 'Saisissez le numéro de l\u2019inscription à vérifier : un nombre entier, 0 ou plus.');
      return;
    }
    try {
      const answer = await get(`/audit/api/inclusion?n=${index}`);
      const { size, root } = await P.checkpoint(answer.checkpoint, pinned.value);
      const proof = answer.proof.map(P.fromB64);
      if (!(await P.included(P.fromB64(answer.entry), index, proof, size, root))) {
        throw new Error('la preuve d\u2019inclusion ne mène pas à la racine du journal signé');
      }
      say('inclusion-status', `Inscription n° ${index} vérifiée : elle figure dans le journal signé (${size} inscriptions).`);
    } catch (e) {
      say('inclusion-status', `Inscription n° ${index} : la vérification a échoué : ${e.message}.`);
    }
  }

  // « Vérifier » on a row of the events.
  async function checkRow(button) {
    const index = Number(button.dataset.index);
    const said = `Inscription n° ${index} : `;
    say('verify-status', '');
    try {
      const answer = await get(`/audit/api/inclusion?n=${index}`);
      const { size, root } = await P.checkpoint(answer.checkpoint, pinned.value);
      const entry = P.fromB64(answer.entry);
      const proof = answer.proof.map(P.fromB64);
      if (answer.index !== index || !(await P.included(entry, index, proof, size, root))) {
        throw new Error('la preuve d\u2019inclusion ne mène pas à la racine du journal signé');
      }
      if (button.dataset.kind === 'unreadable') {
        say('verify-status', `${said}elle figure dans le journal signé par ${byKey()} (${size} inscriptions) ; illisible, comme sa ligne le dit, elle n\u2019a pas été comparée à sa ligne : lisez-la dans son dossier de preuve.`);
        return;
      }
      recordsTheRow(entry, button);
      say('verify-status', `Inscription n° ${index} vérifiée : elle figure, telle que sa ligne la montre, dans le journal signé par ${byKey()} (${size} inscriptions).`);
    } catch (e) {
      say('verify-status', `${said}la vérification a échoué : ${e.message}.`);
    }
  }

  // The fields a row is made from, as an entry records them (read as the broker reads them
  // for the row's data-* attributes), each with the words that name it.
  const FIELDS = [
    ['kind', 'le genre'], ['participant', 'le participant'], ['agent', 'l\u2019agent'],
    ['type', 'les données'], ['purpose', 'la finalité'], ['outcome', 'le résultat'],
    ['mandate', 'le mandat'], ['contested', 'l\u2019inscription contestée'],
    ['reason', 'la raison'], ['query', 'la requête'],
  ];
  function recordedBy(e) {
    const list = (many, one) => (Array.isArray(many) ? many.join(',') : one);
    const contest = e.kind === 'access_contested';
    return {
      kind: e.kind,
      participant: e.kind === 'mandate_created' ? e.structure : e.participant,
      agent: e.agent,
      type: list(e.attestation_types, e.attestation_type),
      purpose: list(e.purposes, e.purpose),
      outcome: e.outcome,
      mandate: e.mandate_id,
      contested: contest ? e.entry : undefined,
      reason: contest ? e.reason : undefined,
      query: e.query,
    };
  }

  // Throws unless the entry records what the button's row shows.
  function recordsTheRow(bytes, button) {
    let entry;
    try {
      entry = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    } catch (e) {
      throw new Error('l\u2019inscription du journal est illisible, sa ligne ne le dit pas');
    }
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      throw new Error('l\u2019inscription du journal n\u2019est pas un événement');
    }
    const text = (v) => (v === undefined || v === null ? '' : String(v));
    const second = (t) => Math.floor(Date.parse(String(t).replace(/\.\d+/, '')) / 1000);
    const shown = button.closest('tr')?.querySelector('time')?.getAttribute('datetime');
    const differs = [];
    if (!shown || Number.isNaN(second(shown)) || second(entry.time) !== second(shown)) differs.push('la date');
    const recorded = recordedBy(entry);
    for (const [field, words] of FIELDS) {
      if (text(recorded[field]) !== (button.dataset[field] ?? '')) differs.push(words);
    }
    if (differs.length > 0) {
      throw new Error(`l\u2019inscription du journal ne dit pas ce que montre sa ligne (${differs.join(', ')})`);
    }
  }

  const on = (id, type, listener) => document.getElementById(id)?.addEventListener(type, listener);
  (async () => {
    if (!(await P.canVerify(log.dataset.vkey))) return;
    for (const section of document.querySelectorAll('.needs-js')) section.hidden = false;
    for (const notice of document.querySelectorAll('.without-js')) notice.hidden = true;
    on('check-checkpoint', 'click', checkLatest);
    on('consistency-form', 'submit', checkConsistency);
    on('inclusion-form', 'submit', checkInclusion);
    for (const button of document.querySelectorAll('button.verify')) {
      button.hidden = false;
      button.addEventListener('click', () => checkRow(button));
    }
  })();
})();
