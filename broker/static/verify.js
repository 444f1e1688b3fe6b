// « Vérifier »: checks, in the person's own browser, that an exchange shown on the page is in
// the log the broker signed: the checkpoint's Ed25519 signature against the log's verifier
// key (C2SP signed note), the entry's RFC 9162 inclusion proof up to the checkpoint's root
// (proofs.js), then that the entry records what its row shows: its time to the second (the
// row's <time>), the organisation, the data, the purpose and the outcome (their codes, which
// the row's words are named from), as `unefois verify` checks a saved history. The pages
// work without it (the buttons stay hidden).
'use strict';

(function () {
  const status = document.getElementById('verify-status');
  const log = document.getElementById('log-proof');
  if (!status || !log || !window.crypto || !crypto.subtle || typeof UnefoisProofs === 'undefined') {
    return;
  }
  const P = UnefoisProofs;

  async function verify(button) {
    const index = Number(button.dataset.index);
    const said = `Consultation n° ${index} : `;
    try {
      const note = new TextDecoder().decode(P.fromB64(log.dataset.checkpoint));
      const { size, root } = await P.checkpoint(note, log.dataset.vkey);
      const proof = button.dataset.proof ? button.dataset.proof.split(',').map(P.fromB64) : [];
      const entry = P.fromB64(button.dataset.entry);
      if (!(await P.included(entry, index, proof, size, root))) {
        throw new Error('la preuve d\u2019inclusion ne mène pas à la racine du journal signé');
      }
      recordsTheRow(entry, button);
      status.textContent = `${said}vérifiée. Elle figure, telle que la ligne la montre, dans le journal signé par la clé du journal (${size} inscriptions).`;
    } catch (e) {
      status.textContent = `${said}la vérification a échoué : ${e.message}.`;
    }
  }

  // Throws unless the entry is the exchange the button's row shows.
  function recordsTheRow(bytes, button) {
    let entry;
    try {
      entry = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    } catch (e) {
      throw new Error('l\u2019inscription du journal est illisible');
    }
    const second = (t) => Math.floor(Date.parse(String(t).replace(/\.\d+/, '')) / 1000);
    const shown = button.closest('tr')?.querySelector('time')?.getAttribute('datetime');
    const differs = [];
    if (entry === null || typeof entry !== 'object' || entry.kind !== 'exchange') {
      throw new Error('l\u2019inscription du journal n\u2019est pas une consultation');
    }
    if (!shown || Number.isNaN(second(shown)) || second(entry.time) !== second(shown)) differs.push('la date');
    if (entry.participant !== button.dataset.participant) differs.push('l\u2019organisme');
    if (entry.attestation_type !== button.dataset.type) differs.push('les données');
    if (entry.purpose !== button.dataset.purpose) differs.push('la finalité');
    if (entry.outcome !== button.dataset.outcome) differs.push('le résultat');
    if (differs.length > 0) {
      throw new Error(`l\u2019inscription du journal ne dit pas ce que montre la ligne (${differs.join(', ')})`);
    }
  }

  (async () => {
    if (!(await P.canVerify(log.dataset.vkey))) return;
    for (const button of document.querySelectorAll('button.verify')) {
      button.hidden = false;
      button.addEventListener('click', () => verify(button));
    }
  })();
})();
