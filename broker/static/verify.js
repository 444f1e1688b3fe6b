// « Vérifier »: checks, in the person's own browser, that an exchange shown on the page is in
// the log the broker signed: the checkpoint's Ed25519 signature against the log's verifier
// key (C2SP signed note), then the entry's RFC 9162 inclusion proof up to the checkpoint's
// root (proofs.js). The pages work without it (the buttons stay hidden).
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
      if (!(await P.included(P.fromB64(button.dataset.entry), index, proof, size, root))) {
        throw new Error('la preuve d\u2019inclusion ne mène pas à la racine du journal signé');
      }
      status.textContent = `${said}vérifiée. Elle figure dans le journal signé par la clé du journal (${size} inscriptions).`;
    } catch (e) {
      status.textContent = `${said}la vérification a échoué : ${e.message}.`;
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
