// The auditors' console's proof checks, in the auditor's browser (proofs.js): the latest
// checkpoint against the log key the auditor pins (the federation operator's published one,
// not only the one this broker shows), the consistency of a checkpoint they kept with the
// latest one, and the inclusion of a chosen entry. Each result is said in its role=status
// region. The console works without it; only these checks need it.
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
      say('checkpoint-status', `Point de contrôle vérifié : signé par la clé épinglée, ${size} inscriptions.`);
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

  (async () => {
    if (!(await P.canVerify(log.dataset.vkey))) return;
    for (const section of document.querySelectorAll('.needs-js')) section.hidden = false;
    for (const notice of document.querySelectorAll('.without-js')) notice.hidden = true;
    document.getElementById('check-checkpoint').addEventListener('click', checkLatest);
    document.getElementById('consistency-form').addEventListener('submit', checkConsistency);
    document.getElementById('inclusion-form').addEventListener('submit', checkInclusion);
  })();
})();
