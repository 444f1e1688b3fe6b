#!/usr/bin/env python3
"""An example HTTP provider shaped like API Particulier v3's "quotient familial CAF & MSA"
identity route, for the Une Fois walkthrough and tests. Python's standard library only.

    python3 examples/providers/http/provider.py

serves https://127.0.0.1:8443/v3/dss/quotient_familial/identite with the committed development
certificate of dev-tls/ (its key is PUBLIC: development only), and answers as API Particulier
does:

- the caller authenticates with `Authorization: Bearer <token>` (the token of --token-file);
  otherwise 401 with an `errors` body;
- `recipient` must be the SIRET of the organisation receiving the data (14 digits), otherwise
  400; the person is given by her civil-status identity (`nomNaissance`, `prenoms[]`,
  `anneeDateNaissance`, `moisDateNaissance`, `jourDateNaissance`, `sexeEtatCivil`,
  `codeCogInseePaysNaissance`, `codeCogInseeCommuneNaissance`);
- an unknown person is a 404 whose error code is 37003 ("dossier allocataire absent"); any other
  path is a 404 without that code (a wrong route);
- over --rate calls a second, 429 with `Retry-After`;
- the answer is `{"data": {...}, "links": {}, "meta": {}}` with `regime`, `allocataires`,
  `enfants`, `adresse` and `quotient_familial` (`fournisseur`, `valeur`, `annee`, `mois`).

The people are those of --dataset (people.json beside this file: each
entry an identity and the data answered). Each call is logged on stderr without the identity.
"""

import argparse
import http.server
import json
import ssl
import sys
import threading
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROUTE = "/v3/dss/quotient_familial/identite"


def errors(code, title, detail):
    """An API Particulier v3 error body."""
    return {
        "errors": [
            {
                "code": code,
                "title": title,
                "detail": detail,
                "source": None,
                "meta": {"provider": "CNAV"},
            }
        ]
    }


def identity_key(query):
    """The identity of a query, as the dataset keys it: NOM|PRENOMS|YYYY-MM-DD|SEXE|COMMUNE|PAYS."""
    one = lambda name: (query.get(name) or [""])[0]
    given = query.get("prenoms[]") or query.get("prenoms") or []
    try:
        date = "%04d-%02d-%02d" % (
            int(one("anneeDateNaissance")),
            int(one("moisDateNaissance")),
            int(one("jourDateNaissance")),
        )
    except ValueError:
        return None
    return "|".join(
        [
            one("nomNaissance").upper(),
            " ".join(given).upper(),
            date,
            one("sexeEtatCivil").upper(),
            one("codeCogInseeCommuneNaissance"),
            one("codeCogInseePaysNaissance"),
        ]
    )


class RateLimit:
    """At most `per_second` calls in any one-second window."""

    def __init__(self, per_second):
        self.per_second = per_second
        self.calls = []
        self.lock = threading.Lock()

    def admit(self):
        """None if admitted, else the seconds to wait."""
        with self.lock:
            now = time.monotonic()
            self.calls = [t for t in self.calls if now - t < 1.0]
            if self.per_second and len(self.calls) >= self.per_second:
                return max(1, int(1.0 - (now - self.calls[0])) + 1)
            self.calls.append(now)
            return None


def handler(token, people, limit):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "api-particulier-example/1"

        def log_message(self, fmt, *args):
            pass

        def answer(self, status, body, headers=()):
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            print(f"{self.command} {urllib.parse.urlsplit(self.path).path} -> {status}", file=sys.stderr, flush=True)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if self.headers.get("Authorization", "") != f"Bearer {token}":
                return self.answer(401, errors("50002", "Jeton invalide", "Le jeton d'accès est absent, expiré ou invalide."))
            if url.path != ROUTE:
                return self.answer(404, {"errors": [{"code": "00404", "title": "Route inconnue", "detail": "Aucune route ne correspond.", "source": None, "meta": {}}]})
            wait = limit.admit()
            if wait is not None:
                return self.answer(
                    429,
                    errors("00429", "Trop de requêtes", "Limite de requêtes par seconde atteinte."),
                    [("Retry-After", str(wait))],
                )
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            recipient = (query.get("recipient") or [""])[0]
            if not (len(recipient) == 14 and recipient.isdigit()):
                return self.answer(400, errors("00211", "Paramètre invalide", "Le paramètre recipient doit être un numéro de SIRET."))
            person = people.get(identity_key(query) or "")
            if person is None:
                return self.answer(404, errors("37003", "Entité non trouvée", "Dossier allocataire inexistant."))
            return self.answer(200, {"data": person, "links": {}, "meta": {}})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    parser.add_argument("--dataset", default=str(HERE / "people.json"))
    parser.add_argument("--token-file", default=str(HERE / "token.txt"))
    parser.add_argument("--tls-cert", default=str(HERE / "dev-tls" / "server.crt"))
    parser.add_argument("--tls-key", default=str(HERE / "dev-tls" / "server.key"))
    parser.add_argument("--rate", type=int, default=20, help="calls a second (API Particulier: 20 per token); 0: no limit")
    args = parser.parse_args()

    token = Path(args.token_file).read_text().strip()
    people = json.loads(Path(args.dataset).read_text())
    server = http.server.ThreadingHTTPServer((args.host, args.port), handler(token, people, RateLimit(args.rate)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls_cert, args.tls_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    host, port = server.server_address[:2]
    print(f"listening on https://{host}:{port}{ROUTE}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
