// The offline verifier: checks a proof bundle (unefois-proof-bundle/v1, downloaded from the
// auditors' console) without the broker: the checkpoint against the log key the auditor
// types (the one the federation's operator publishes), each entry's inclusion proof, and,
// when the bundle carries an older checkpoint, the consistency of the two.
'use strict';

(function () {
  const P = UnefoisProofs;
  const status = document.getElementById('status');
  const say = (lines) => {
    status.textContent = lines.join(' ');
  };

  async function bundleText() {
    const file = document.getElementById('bundle-file').files[0];
    if (file) return file.text();
    return document.getElementById('bundle-text').value;
  }

  async function check(event) {
    event.preventDefault();
    const lines = [];
    try {
      const key = document.getElementById('key').value.trim();
      if (!key) throw new Error('saisissez la clé du journal que publie l\u2019opérateur de la fédération');
      const bundle = JSON.parse(await bundleText());
      if (bundle.format !== 'unefois-proof-bundle/v1') throw new Error('ce fichier n\u2019est pas un dossier de preuve Une Fois');
      if (bundle.log_key && bundle.log_key.trim() !== key) {
        lines.push('Attention : la clé du dossier diffère de la clé saisie ; seule la clé saisie compte.');
      }
      // Absent, no entry; present, a list: anything else is not a bundle this verifier
      // checks, rather than one whose entries it silently skips.
      if (bundle.entries !== undefined && !Array.isArray(bundle.entries)) {
        throw new Error('les inscriptions du dossier (« entries ») ne sont pas une liste : ce dossier n\u2019est pas valide');
      }
      const entries = bundle.entries || [];
      if (entries.length === 0 && !bundle.older_checkpoint) {
        throw new Error('le dossier ne contient ni inscription ni ancien point de contrôle à vérifier');
      }
      const { size, root } = await P.checkpoint(bundle.checkpoint, key);
      lines.push(`Point de contrôle signé par la clé saisie (${size} inscriptions).`);
      for (const e of entries) {
        if (!Number.isSafeInteger(e.index) || e.index < 0) throw new Error('numéro d\u2019inscription invalide dans le dossier');
        const ok = await P.included(P.fromB64(e.entry), e.index, (e.inclusion_proof || []).map(P.fromB64), size, root);
        if (!ok) throw new Error(`l\u2019inscription n° ${e.index} ne figure pas dans ce journal (preuve d\u2019inclusion invalide)`);
        lines.push(`Inscription n° ${e.index} : incluse.`);
      }
      if (bundle.older_checkpoint) {
        const older = await P.checkpoint(bundle.older_checkpoint, key);
        const ok = await P.consistent(older.size, older.root, size, root, (bundle.consistency_proof || []).map(P.fromB64));
        if (!ok) throw new Error('le journal ne prolonge pas l\u2019ancien point de contrôle (preuve de cohérence invalide)');
        lines.push(`Cohérent avec le point de contrôle de ${older.size} inscriptions.`);
      }
      say(['Dossier vérifié.', ...lines]);
    } catch (e) {
      say([`La vérification a échoué : ${e.message}.`, ...lines]);
    }
  }

  document.getElementById('verifier').addEventListener('submit', check);
})();
