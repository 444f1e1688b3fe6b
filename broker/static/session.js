// Says, before it comes, that the session is about to end (RGAA 4.1 criterion 13.1, WCAG
// 2.2.1): two minutes before, then at its end, in the header's role=status region, next to
// « Prolonger la session ». The pages work without it: the header always shows when the
// session ends, and a form sent after it is answered « Votre session a pris fin », nothing done.
'use strict';

(function () {
  const form = document.querySelector('form.logout[data-ends]');
  const region = document.getElementById('session-status');
  if (!form || !region) return;
  // Counted from this page's arrival with the seconds the server said were left: the
  // device's clock may be wrong.
  const left = Number(form.dataset.left) * 1000;
  if (!Number.isFinite(left)) return;
  const ends = Date.now() + left;
  const warnAt = ends - 2 * 60 * 1000;
  const warn = () => {
    region.textContent = 'Votre session se termine dans moins de deux minutes. Pour continuer, choisissez « Prolonger la session ».';
  };
  const ended = () => {
    region.textContent = 'Votre session a pris fin : ce que vous enverriez maintenant ne serait pas pris en compte. Choisissez « Prolonger la session » pour vous reconnecter.';
  };
  const now = Date.now();
  if (now >= ends) {
    ended();
    return;
  }
  if (now >= warnAt) warn();
  else setTimeout(warn, warnAt - now);
  setTimeout(ended, ends - now);
})();
