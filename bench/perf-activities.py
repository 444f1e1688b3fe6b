#!/usr/bin/env python3
"""Where the broker's CPU goes: perf samples attributed to the broker's activities.

    perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p BROKER_PID -o perf.data -- sleep 6
    perf script -i perf.data -F comm,tid,ip,sym | python3 bench/perf-activities.py

Each sample counts once, in the first activity of the list below that one of its frames
belongs to (a frame belongs to an activity when it starts with one of its paths, so that a
type parameter naming a broker type inside hyper's generics does not count). Then the same
samples by the family of their leaf function (self time) and by thread. Release builds carry
line tables only, no frame pointers: hence the DWARF call graphs.
"""
import collections
import re
import sys

# The store's frames: inherent (`unefois_store::embedded::Trees::apply`) or trait methods
# (`<unefois_store::embedded::Embedded as unefois_store::Store>::append`).
STORE = r"<?unefois_store"
AS_STORE = r"( as [^>]*>)?"

ACTIVITIES = [  # (label, regex matched at the start of a frame); first match wins
    ("Ed25519 signature of the attestation (AttestationSigner::sign)",
     r"<?broker::signing::AttestationSigner.*::sign"),
    ("Ed25519 signature of the checkpoint (LogSigner)", r"<?broker::audit::checkpoint::LogSigner"),
    ("receipt: inclusion proof (tlog_tiles over the tree's memory and file, or the stored hashes)",
     rf"{STORE}::(embedded::Embedded|postgres::Postgres|tree::TreeFile){AS_STORE}::inclusion_proof"),
    ("receipt: latest checkpoint", rf"{STORE}::(embedded::Embedded|postgres::Postgres){AS_STORE}"
     r"::latest_checkpoint"),
    ("receipt: other", r"<?broker::exchange::receipt"),
    ("consent lookup (the store's consents_for)",
     rf"{STORE}::(embedded::Embedded|postgres::Postgres|postgres::lookups){AS_STORE}::consents_for"
     rf"|{STORE}::postgres::lookups"),
    ("derived state: sled (Trees::apply, the staged heads and mark)",
     rf"{STORE}::embedded::(Trees::(apply|stage|persist|write|head)|apply_batch)"),
    ("derived state: positions and tree files",
     rf"{STORE}::(positions|tree::TreeFile::append|reserve)"),
    ("derived state: checkpoint root (Trees::checkpoint)", rf"{STORE}::embedded::Trees::checkpoint"),
    ("PostgreSQL: the writer's transaction and the client",
     rf"{STORE}::postgres|<?(tokio_postgres|postgres_protocol)::"),
    ("journal: fdatasync (kernel)", r"(__x64_sys_)?fdatasync"),
    ("journal: write and framing", r"<?unefois_journal::"),
    ("audit record: build and serialize",
     r"<?(broker::(exchange::record|gathered_writes)|unefois_domain::event"
     rf"|{STORE}::(embedded::Embedded|postgres::Postgres|memory::Memory){AS_STORE}::append)"),
    ("pseudonyms and the audit pseudonym's seal",
     r"<?unefois_domain::(pseudonym|seal)"),
    ("grpc adapter: call to the provider (tonic/h2 client, TLS client)",
     r"<?(broker::(provider_client|provider_gate)|unefois_adapters|h2::client"
     r"|hyper::proto::h2::client|tonic::transport::channel|hyper_util::client)"),
    ("attestation JSON and envelope", r"<?(broker::signing|unefois_domain::attestation)"),
    ("other exchange (policy, validation, subject)",
     r"<?(broker::(exchange|fetched|idempotency|ratelimit|federation|evidence)"
     r"|unefois_domain::(policy|subject|validate|registry|caller|consent|mandate|projection))"),
    ("gRPC service glue (tonic codec, prost, observe/limit/auth layers, metrics)",
     r"<?(broker::grpc|tonic::server|tonic::codec|unefois_proto|prost|metrics)"),
    ("inbound HTTP/2 and TLS (hyper/h2 server, rustls, socket I/O)",
     r"<?(h2::|hyper::|hyper_util::|tokio_rustls|rustls::|broker::(listener|shed)|tokio::net"
     r"|mio::net)"),
    ("sled background threads", r"<?sled::"),
    ("tokio scheduler, park/unpark, timers", r"<?(tokio::runtime|mio::|std::thread)"),
]

LEAF_FAMILIES = [
    ("malloc/free (glibc)",
     r"^(_int_malloc|_int_free|malloc|cfree|free|realloc|malloc_consolidate|unlink_chunk"
     r"|_int_realloc|__GI___libc_(malloc|free|realloc)|tcache)"),
    ("memcpy/memmove/memcmp", r"__mem(move|cpy|cmp|set)"),
    ("Ed25519 arithmetic (curve25519_dalek)", r"curve25519_dalek"),
    ("SHA-2", r"sha2::|sha256|sha512"),
    ("AES-GCM, TLS records (ring)", r"ring_core|ring::"),
    ("sled", r"<?sled::"),
    ("serde_json", r"<?serde_json"),
    ("prost", r"<?prost::"),
    ("h2, hyper", r"<?(h2::|hyper)"),
]


def samples(lines):
    """(thread name, frames leaf first) for each sample of `perf script -F comm,tid,ip,sym`."""
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line[0].isspace():
            comm, frames = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "?")
    if comm is not None:
        yield comm, frames


def kernel_frame(frame):
    return re.match(r"^[a-z_][a-z0-9_.]*$", frame) is not None and "::" not in frame


def main():
    activities, leaves, threads = (collections.Counter() for _ in range(3))
    total = 0
    for comm, frames in samples(sys.stdin):
        total += 1
        threads[re.sub(r"-\d+$", "", comm)] += 1
        for label, rx in ACTIVITIES:
            if any(re.match(rx, f) for f in frames):
                activities[label] += 1
                break
        else:
            activities["other"] += 1
        leaf = frames[0] if frames else "?"
        for label, rx in LEAF_FAMILIES:
            if re.search(rx, leaf):
                leaves[label] += 1
                break
        else:
            leaves["kernel (other)" if kernel_frame(leaf) else "other"] += 1
    if total == 0:
        sys.exit("no samples on stdin")
    for title, counter in [("By activity (each sample once)", activities),
                           ("By leaf function family (self time)", leaves),
                           ("By thread", threads)]:
        print(f"{title}, {total} samples:")
        for label, n in counter.most_common():
            print(f"  {100 * n / total:5.1f} %  {label}")
        print()


if __name__ == "__main__":
    main()
