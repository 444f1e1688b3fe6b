#!/usr/bin/env python3
"""An Une Fois provider in Python: serves ``unefois.v1.Provider`` from a JSON dataset.

    .venv/bin/python provider.py --dataset ../../data/mesr.statut_etudiant.json --port 50051

The dataset maps each subject (``scheme:value``) to its claims, e.g.
``{"test:eve": {"est_etudiant": true, "annee_universitaire": "2026-2027"}}``. JSON booleans,
integers, numbers and strings become ``boolean_value``, ``integer_value``, ``number_value``
and ``string_value``; the claims named by ``--date-claims`` are sent as ``date_value``
(``YYYY-MM-DD``). Only the requested claims are returned; an unknown subject is answered
with NOT_FOUND, a request for another attestation type with INVALID_ARGUMENT.

Once listening it prints ``listening on <host>:<port>`` on stdout (the real port when
``--port 0``). Without ``--tls-cert`` it serves plain HTTP/2 (for a broker on the same host);
with ``--tls-cert``, ``--tls-key`` and ``--ca`` it serves mTLS and accepts only clients whose
certificate chains to ``--ca`` (the broker's).

Proof of origin (docs/adapters/origin.md): when the broker sends a challenge
(``origin_nonce``, ``origin_subject_key``: the registry declares this provider's keys), the
answer carries a signed statement of exactly the claims returned, an EdDSA JWS made with
``--signing-key`` (by default the committed development key ``origin-signing-key.json``, whose
public JWKS is ``origin-jwks.json``: development only, anyone can sign with it).

It logs who asks (consumer, purpose, legal basis, request id) and the claim names, never the
subject nor a value. The stubs are generated into ``generated/`` by ``bootstrap.py``.
"""

import argparse
import base64
import hashlib
import hmac
import json
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "generated"))

try:
    import grpc
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from unefois.v1 import common_pb2, exchange_pb2, provider_pb2, provider_pb2_grpc
except ImportError as e:  # pragma: no cover - setup problem
    sys.exit(f"provider: {e}; run `python3 {HERE / 'bootstrap.py'}` and use {HERE / '.venv/bin/python'}")

log = logging.getLogger("provider")


def claim_value(name, value, date_claims):
    """A dataset value as a ClaimValue (None for JSON null: the claim is not held)."""
    if value is None:
        return None
    if name in date_claims:
        return exchange_pb2.ClaimValue(date_value=str(value))
    if isinstance(value, bool):
        return exchange_pb2.ClaimValue(boolean_value=value)
    if isinstance(value, int):
        return exchange_pb2.ClaimValue(integer_value=value)
    if isinstance(value, float):
        return exchange_pb2.ClaimValue(number_value=value)
    if isinstance(value, str):
        return exchange_pb2.ClaimValue(string_value=value)
    raise ValueError(f"claim {name!r}: unsupported JSON type {type(value).__name__}")


def b64url(data):
    """Unpadded base64url (RFC 7515)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Signer:
    """Signs statements of the answers: a compact JWS, EdDSA, typ unefois-origin+json."""

    TYP = "unefois-origin+json"

    def __init__(self, path):
        key = json.loads(Path(path).read_text(encoding="utf-8"))
        seed = base64.urlsafe_b64decode(key["d"] + "=" * (-len(key["d"]) % 4))
        self.kid = key["kid"]
        self.key = Ed25519PrivateKey.from_private_bytes(seed)

    def statement(self, request, claims):
        """The signed statement of ``claims`` (name -> JSON value) for this request."""
        digest = hmac.new(request.origin_subject_key, request.subject.encode("utf-8"),
                          hashlib.sha256).digest()
        payload = {
            "attestation_type": request.attestation_type,
            "claims": claims,
            "nonce": request.origin_nonce,
            "subject_digest": b64url(digest),
            "iat": int(time.time()),
        }
        header = {"alg": "EdDSA", "kid": self.kid, "typ": self.TYP}
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
            for part in (header, payload))
        signature = self.key.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{b64url(signature)}"


def legal_basis_text(basis):
    if basis.kind == common_pb2.LEGAL_BASIS_KIND_CONSENT:
        return f"consent:{basis.consent_id}"
    if basis.kind == common_pb2.LEGAL_BASIS_KIND_LAW:
        return f"law:{basis.law_citation}"
    return "unspecified"


class Provider(provider_pb2_grpc.ProviderServicer):
    def __init__(self, attestation_type, dataset, date_claims, signer):
        self.attestation_type = attestation_type
        self.dataset = dataset
        self.date_claims = date_claims
        self.signer = signer

    def Provide(self, request, context):
        log.info(
            "provide type=%s consumer=%s purpose=%s legal_basis=%s request_id=%s claims=%s",
            request.attestation_type,
            request.consumer,
            request.purpose,
            legal_basis_text(request.legal_basis),
            request.request_id,
            ",".join(request.claims),
        )
        if request.attestation_type != self.attestation_type:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "attestation type not served here")
        record = self.dataset.get(request.subject)
        if record is None:
            # Never echo the subject back: the broker may log status messages.
            context.abort(grpc.StatusCode.NOT_FOUND, "subject unknown")
        response = provider_pb2.ProvideResponse()
        stated = {}
        for name in request.claims:
            value = claim_value(name, record.get(name), self.date_claims)
            if value is not None:
                response.claims[name].CopyFrom(value)
                stated[name] = record[name]
        # The broker sends a challenge when the registry declares this provider's keys.
        if self.signer is not None and request.origin_nonce:
            response.origin = self.signer.statement(request, stated)
        return response


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path,
                        help="JSON file: subject -> claims")
    parser.add_argument("--attestation-type",
                        help="the type served (default: the dataset file's name without .json)")
    parser.add_argument("--date-claims", default="",
                        help="comma-separated claim names sent as date_value")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--tls-cert", type=Path, help="PEM server certificate chain (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM server private key (mTLS)")
    parser.add_argument("--ca", type=Path, help="PEM CA that client certificates must chain to")
    parser.add_argument("--max-connection-age-ms", type=int, default=0,
                        help="send HTTP/2 GOAWAY on connections older than this (0: never)")
    parser.add_argument("--workers", type=int, default=8, help="worker threads")
    parser.add_argument("--signing-key", type=Path, default=HERE / "origin-signing-key.json",
                        help="the key signing the answers, {kid, d} (default: the committed "
                             "development key; proof of origin, docs/adapters/origin.md)")
    parser.add_argument("--no-signing", action="store_true",
                        help="never sign the answers, even when the broker asks")
    args = parser.parse_args()
    tls = [args.tls_cert, args.tls_key, args.ca]
    if any(tls) and not all(tls):
        parser.error("--tls-cert, --tls-key and --ca go together")
    return args


def main():
    args = parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dataset = json.loads(args.dataset.read_text(encoding="utf-8"))
    if not isinstance(dataset, dict):
        sys.exit("provider: the dataset must be a JSON object keyed by subject")
    attestation_type = args.attestation_type or args.dataset.name.removesuffix(".json")
    date_claims = {c for c in args.date_claims.split(",") if c}

    options = [("grpc.so_reuseport", 0)]
    if args.max_connection_age_ms > 0:
        options += [
            ("grpc.max_connection_age_ms", args.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", 5000),
        ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=options)
    signer = None if args.no_signing else Signer(args.signing_key)
    provider_pb2_grpc.add_ProviderServicer_to_server(
        Provider(attestation_type, dataset, date_claims, signer), server)
    address = f"{args.host}:{args.port}"
    try:
        if args.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(args.tls_key.read_bytes(), args.tls_cert.read_bytes())],
                root_certificates=args.ca.read_bytes(),
                require_client_auth=True,
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:
        sys.exit(f"provider: cannot listen on {address}: {e}")
    if port == 0:
        sys.exit(f"provider: cannot listen on {address}")
    server.start()
    log.info("serving %s (%d subjects)%s%s", attestation_type, len(dataset),
             " over mTLS" if args.tls_cert else "",
             f", signing with key {signer.kid}" if signer else "")
    print(f"listening on {args.host}:{port}", flush=True)

    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()
