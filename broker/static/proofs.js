// The proof checks the pages run in the browser (WebCrypto, no framework): a C2SP signed
// note's Ed25519 signature against the log's verifier key, RFC 9162 inclusion and consistency
// proofs. Shared by « Vérifier » (verify.js), the auditors' console (console.js) and the
// offline verifier (one HTML file that carries this script inline).
'use strict';

const UnefoisProofs = (() => {
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
  const half = (n) => Math.floor(n / 2);
  const node = (left, right) => sha256(concat(Uint8Array.of(1), left, right));

  // The verifier key `name+keyid+key` (a name never holds '+', the base64 key may).
  function parseKey(vkey) {
    const first = vkey.indexOf('+');
    const second = vkey.indexOf('+', first + 1);
    if (first < 1 || second < 0) throw new Error('clé du journal illisible');
    const key = fromB64(vkey.slice(second + 1));
    if (key.length !== 33 || key[0] !== 1) throw new Error('clé du journal illisible');
    return { name: vkey.slice(0, first), keyId: vkey.slice(first + 1, second), key: key.slice(1) };
  }

  // Whether this browser can check an Ed25519 signature at all (older ones cannot): a browser
  // that cannot check is never taken for a log that failed the check.
  async function canVerify(vkey) {
    try {
      await crypto.subtle.importKey('raw', parseKey(vkey).key, { name: 'Ed25519' }, false, ['verify']);
      return true;
    } catch (e) {
      return false;
    }
  }

  // The checkpoint's size and root, once its signature by `vkey` verifies; throws otherwise.
  // The key's id must be its C2SP id (the first 4 bytes of SHA-256 of the name, a newline,
  // 0x01 and the key): a key that names another's id is not that key.
  async function checkpoint(note, vkey) {
    const { name, keyId, key } = parseKey(vkey.trim());
    const id = await sha256(concat(new TextEncoder().encode(name + '\n'), Uint8Array.of(1), key));
    if (keyId !== hex(id.slice(0, 4))) throw new Error('clé du journal illisible : son identifiant n\u2019est pas le sien');
    const blank = note.indexOf('\n\n');
    if (blank < 0) throw new Error('point de contrôle illisible');
    const text = note.slice(0, blank + 1);
    const prefix = '\u2014 ' + name + ' ';
    const publicKey = await crypto.subtle.importKey('raw', key, { name: 'Ed25519' }, false, ['verify']);
    let signed = false;
    for (const line of note.slice(blank + 2).split('\n')) {
      if (!line.startsWith(prefix)) continue;
      let sig;
      try {
        sig = fromB64(line.slice(prefix.length));
      } catch (e) {
        continue;
      }
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
    if (!(index < size)) return false;
    let hash = await sha256(concat(Uint8Array.of(0), entry));
    let fn = index;
    let sn = size - 1;
    for (const p of proof) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        hash = await node(p, hash);
        while (fn % 2 === 0 && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      } else {
        hash = await node(hash, p);
      }
      fn = half(fn);
      sn = half(sn);
    }
    return sn === 0 && equal(hash, root);
  }

  // RFC 9162, 2.1.4.2: whether the tree of `second` leaves and root `secondRoot` extends the
  // tree of `first` leaves and root `firstRoot`, by `proof`.
  async function consistent(first, firstRoot, second, secondRoot, proof) {
    if (!(first > 0) || first > second) return false;
    if (first === second) return proof.length === 0 && equal(firstRoot, secondRoot);
    // A first tree that is a complete subtree (a power of two) is its own first hash.
    let power = first;
    while (power % 2 === 0) power = half(power);
    const path = power === 1 ? [firstRoot, ...proof] : proof;
    if (path.length === 0) return false;
    let fn = first - 1;
    let sn = second - 1;
    while (fn % 2 === 1) {
      fn = half(fn);
      sn = half(sn);
    }
    let fr = path[0];
    let sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        fr = await node(c, fr);
        sr = await node(c, sr);
        while (fn % 2 === 0 && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      } else {
        sr = await node(sr, c);
      }
      fn = half(fn);
      sn = half(sn);
    }
    return sn === 0 && equal(fr, firstRoot) && equal(sr, secondRoot);
  }

  return { fromB64, canVerify, checkpoint, included, consistent };
})();
