// « Vérifier »: checks, in the person's own browser, that an exchange shown on the page is in
// the log the broker signed: the checkpoint's Ed25519 signature against the log's verifier
// key (C2SP signed note), then the entry's RFC 9162 inclusion proof up to the checkpoint's
// root. WebCrypto only, no framework; the pages work without it (the buttons stay hidden).
'use strict';

(function () {
  const status = document.getElementById('verify-status');
  const log = document.getElementById('log-proof');
  if (!status || !log || !window.crypto || !crypto.subtle) {
    return;
  }

  const fromB64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  const sha256 = async (bytes) => new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

  // The checkpoint's size and root, once its signature by `vkey` verifies; throws otherwise.
  async function checkpoint(note, vkey) {
    // name+keyid+key: a name never holds '+', the base64 key may.
    const first = vkey.indexOf('+');
    const second = vkey.indexOf('+', first + 1);
    if (first < 1 || second < 0) throw new Error('clé du journal illisible');
    const name = vkey.slice(0, first);
    const keyId = vkey.slice(first + 1, second);
    const keyB64 = vkey.slice(second + 1);
    const key = fromB64(keyB64);
    if (key.length !== 33 || key[0] !== 1) throw new Error('clé du journal illisible');
    const blank = note.indexOf('\n\n');
    if (blank < 0) throw new Error('point de contrôle illisible');
    const text = note.slice(0, blank + 1);
    const prefix = '\u2014 ' + name + ' ';
    const publicKey = await crypto.subtle.importKey('raw', key.slice(1), { name: 'Ed25519' }, false, ['verify']);
    let signed = false;
    for (const line of note.slice(blank + 2).split('\n')) {
      if (!line.startsWith(prefix)) continue;
      const sig = fromB64(line.slice(prefix.length));
      if (sig.length !== 68 || hex(sig.slice(0, 4)) !== keyId) continue;
      if (await crypto.subtle.verify({ name: 'Ed25519' }, publicKey, sig.slice(4), new TextEncoder().encode(text))) {
        signed = true;
      }
    }
    if (!signed) throw new Error('la signature du point de contrôle ne correspond pas à la clé du journal');
    const lines = text.split('\n');
    if (lines[0] !== name) throw new Error('point de contrôle d\u2019un autre journal');
    const size = Number(lines[1]);
    const root = fromB64(lines[2]);
    if (!Number.isSafeInteger(size) || root.length !== 32) throw new Error('point de contrôle illisible');
    return { size, root };
  }

  // RFC 9162, 2.1.3.2: whether `entry` is leaf `index` of the tree of `size` leaves and `root`.
  async function included(entry, index, proof, size, root) {
    if (index >= size) return false;
    let hash = await sha256(concat(Uint8Array.of(0), entry));
    let fn = index;
    let sn = size - 1;
    for (const p of proof) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        hash = await sha256(concat(Uint8Array.of(1), p, hash));
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      } else {
        hash = await sha256(concat(Uint8Array.of(1), hash, p));
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 && equal(hash, root);
  }

  async function verify(button) {
    const index = Number(button.dataset.index);
    const said = `Consultation n° ${index} : `;
    try {
      const note = new TextDecoder().decode(fromB64(log.dataset.checkpoint));
      const { size, root } = await checkpoint(note, log.dataset.vkey);
      const proof = button.dataset.proof ? button.dataset.proof.split(',').map(fromB64) : [];
      if (!(await included(fromB64(button.dataset.entry), index, proof, size, root))) {
        throw new Error('la preuve d\u2019inclusion ne mène pas à la racine du journal signé');
      }
      status.textContent = `${said}vérifiée. Elle figure dans le journal signé par la clé du journal (${size} inscriptions).`;
    } catch (e) {
      status.textContent = `${said}la vérification a échoué : ${e.message}.`;
    }
  }

  // The buttons appear only where this browser can check an Ed25519 signature (older ones
  // cannot): a browser that cannot check is never taken for a log that failed the check.
  (async () => {
    try {
      const vkey = log.dataset.vkey;
      const key = fromB64(vkey.slice(vkey.indexOf('+', vkey.indexOf('+') + 1) + 1));
      await crypto.subtle.importKey('raw', key.slice(1), { name: 'Ed25519' }, false, ['verify']);
    } catch (e) {
      return;
    }
    for (const button of document.querySelectorAll('button.verify')) {
      button.hidden = false;
      button.addEventListener('click', () => verify(button));
    }
  })();
})();
