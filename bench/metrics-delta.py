#!/usr/bin/env python3
"""Where an answer's time went between two scrapes of the broker's /metrics.

    bench/metrics-delta.py BEFORE.txt AFTER.txt

For the latency histograms of a fetch (the whole call, the provider's answer, the journal
append, the disk's sync) and the journal's batch sizes, prints the count of samples taken
between the two scrapes and the bucket bounds that hold their p50, p90 and p99 (an upper bound:
the buckets are 0.25, 0.5, 1, 2, 5, 10 ms...).
"""
import re
import sys
from collections import defaultdict

SHOWN = ("unefois_grpc_request_duration_seconds", "unefois_provider_duration_seconds",
         "unefois_journal_append_seconds", "unefois_journal_sync_seconds",
         "unefois_journal_batch_records")


def buckets(path):
    """{series: {le: cumulative count}} of the shown histograms."""
    found = defaultdict(dict)
    for line in open(path):
        m = re.match(r'(\w+)_bucket\{(.*)\} (\S+)$', line.strip())
        if not m or m.group(1) not in SHOWN:
            continue
        name, labels, value = m.groups()
        le = re.search(r'le="([^"]+)"', labels).group(1)
        rest = re.sub(r',?le="[^"]+"', '', labels).strip(',')
        found[f"{name}{{{rest}}}"][le] = float(value)
    return found


def bound(le, name):
    if le == "+Inf":
        return "+Inf"
    if name.endswith("_seconds"):
        return f"{float(le) * 1000:g} ms"
    return f"{float(le):g}"


before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
for series in sorted(after):
    if "Exchange/Fetch" not in series and "grpc_request" in series:
        continue
    order = sorted(after[series], key=lambda le: float("inf") if le == "+Inf" else float(le))
    delta = [(le, after[series][le] - before.get(series, {}).get(le, 0.0)) for le in order]
    total = delta[-1][1]
    if total <= 0:
        continue
    name = series.split("{")[0]
    quantile = lambda q: next(bound(le, name) for le, n in delta if n >= q * total)
    print(f"{series}: {total:,.0f} samples, p50 <= {quantile(0.5)}, p90 <= {quantile(0.9)}, "
          f"p99 <= {quantile(0.99)}")
