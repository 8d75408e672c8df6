"""What the lint gate costs per certificate, in one process: pkilint's whole walk against the parts
walk `pkiascode.lint` uses for the second and later certificates of a shape, interleaved round by
round so that a change in machine load hits both (``python bench/lint_cost.py [--leaves 300] [--rounds 3]``).

Prints milliseconds per certificate for: building the stand-in certificate, its shape key, pkilint's
whole walk (decoding included), the parts walk, and `lint_plan` over the whole set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import datetime as dt
    import tempfile

    from cryptography.hazmat.primitives import serialization

    from pkiascode import lint
    from pkiascode.config import load_config
    from pkiascode.model import Observed
    from pkiascode.planner import plan as make_plan
    from pkiascode.plugins import Plugins

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pki.toml"
        path.write_text(gen.bench_toml(args.leaves), encoding="utf-8")
        desired = load_config(path, options_for=Plugins().options)
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    plan = make_plan(desired, Observed.empty(), now=now)
    lint.lint_plan(desired, plan)  # imports, validators, throwaway keys
    ca_entry = desired.entries["ca"]
    key = lint._signing_key(ca_entry.key)
    ca = lint._build(ca_entry, None, now, public_key=key.public_key(), signer=key)
    leaves = [e for e in desired.entries.values() if e.issuer == "ca"]
    first = None
    samples: dict[str, list[float]] = {k: [] for k in ("build", "shape", "whole", "parts", "lint_plan")}
    for _ in range(args.rounds):
        t = time.perf_counter()
        certs = [lint._build(e, ca, now, public_key=key.public_key(), signer=key) for e in leaves]
        samples["build"].append(time.perf_counter() - t)
        ders = [c.public_bytes(serialization.Encoding.DER) for c in certs]
        t = time.perf_counter()
        for c in certs:
            lint._shape(c)
        samples["shape"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for e, der in zip(leaves, ders):
            lint._lint_certificate(der, e.name, False, None)
        samples["whole"].append(time.perf_counter() - t)
        if first is None:
            first = lint._Linted(tuple(lint._lint_certificate(ders[0], leaves[0].name, False, None)))
        t = time.perf_counter()
        for e, der in zip(leaves, ders):
            lint._lint_certificate(der, e.name, False, first)
        samples["parts"].append(time.perf_counter() - t)
        t = time.perf_counter()
        lint.lint_plan(desired, plan)
        samples["lint_plan"].append(time.perf_counter() - t)
    per_cert: dict[str, Any] = {k: statistics.median(v) / len(leaves) * 1000 for k, v in samples.items()}
    if args.json:
        print(json.dumps({"leaves": len(leaves), "ms_per_certificate": per_cert}))
    else:
        print(f"{len(leaves)} alike ecdsa-p256 leaves, median of {args.rounds} rounds, ms per certificate:")
        for k, v in per_cert.items():
            print(f"  {k:10s} {v:7.2f}")
        print(f"  whole/parts walk: {per_cert['whole'] / per_cert['parts']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
