#!/usr/bin/env python3
"""Sets up the example provider: the virtual environment, its dependencies and the gRPC stubs.

    python3 examples/providers/python/bootstrap.py

1. creates ``.venv`` next to this file if it is missing (``python3 -m venv``);
2. installs ``requirements.txt`` into it (quietly) when the file changed since the last install;
3. generates the Python stubs of the repository's ``proto/`` into ``generated/`` with
   ``python -m grpc_tools.protoc`` when a .proto file or the requirements changed.

Idempotent and fast when everything is already done (a few hashes). Concurrent runs (parallel
tests) are serialised with an exclusive lock on ``.bootstrap.lock``. Used by ``.ci/run`` and by
the end-to-end test ``tests/tests/it/grpc_provider.rs``; uses only the standard library.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PROTO = REPO / "proto"
VENV = HERE / ".venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements.txt"
GENERATED = HERE / "generated"
REQUIREMENTS_STAMP = VENV / ".requirements.sha256"
STUBS_STAMP = GENERATED / ".stamp"


def digest(paths):
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(REPO)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def read(path):
    try:
        return path.read_text().strip()
    except OSError:
        return None


def ensure_venv():
    if not PYTHON.exists():
        print(f"bootstrap: creating {VENV.relative_to(REPO)}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)


def ensure_requirements():
    wanted = digest([REQUIREMENTS])
    if read(REQUIREMENTS_STAMP) == wanted:
        return wanted
    print("bootstrap: installing requirements.txt", file=sys.stderr)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(REQUIREMENTS)],
        check=True,
    )
    REQUIREMENTS_STAMP.write_text(wanted + "\n")
    return wanted


def ensure_stubs(requirements):
    protos = sorted(PROTO.rglob("*.proto"))
    if not protos:
        sys.exit(f"bootstrap: no .proto file under {PROTO}")
    wanted = digest(protos) + " " + requirements
    if read(STUBS_STAMP) == wanted:
        return
    print("bootstrap: generating the gRPC stubs", file=sys.stderr)
    tmp = HERE / "generated.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    subprocess.run(
        [str(PYTHON), "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={tmp}",
         f"--grpc_python_out={tmp}", *[str(p) for p in protos]],
        check=True,
    )
    (tmp / ".stamp").write_text(wanted + "\n")
    shutil.rmtree(GENERATED, ignore_errors=True)
    os.replace(tmp, GENERATED)


def main():
    with open(HERE / ".bootstrap.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_venv()
        requirements = ensure_requirements()
        ensure_stubs(requirements)


if __name__ == "__main__":
    main()
