#!/usr/bin/env python
"""pkiascode benchmark: the performance targets, measured against baselines taken in the same run,
and the cost of signing with a Vault Transit authority (reported, no goal). Prints a table and
writes bench/results/latest.json and latest.txt.

    python bench/run.py                       # full run (a few minutes on 2 cores)
    python bench/run.py --workdir /dev/shm    # the same on tmpfs: a CPU-bound comparison
    python bench/run.py --quick               # smoke run: smaller sizes, 1 repetition
    python bench/run.py --only 4              # only some rows (1 KTHW, 2 plan, 3 apply, 4 Vault)
    python bench/run.py --no-profile          # skip the profiles of targets 1-3

Targets: (1) Kubernetes the Hard Way, the shipped set and the CFSSL-era set (a CA and 9 leaves, all
RSA-2048), ``pki apply`` with its commit <= 1.0x a serial ``cryptography`` script; (2) a no-op
``pki plan`` over 10,000 certificates < 0.5 s warm and < 1.5 s cold (a fresh clone without
``.pki/`` state, its key store reachable); (3) 1,000 new ECDSA P-256 leaves, ``pki apply`` with its
commit <= 1.0x the script followed by ``git add`` + ``git commit``. Reported: ``pki --version`` and
``pki plan`` start-up on an empty PKI.

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import gen

PY = sys.executable
PKI = str(Path(PY).with_name("pki")) if Path(PY).with_name("pki").exists() else (shutil.which("pki") or "pki")
RESULTS = HERE / "results"
#: environment of every timed process; see Bench.__init__ (byte-code caching like an installed package)
ENV: dict[str, str] = {}


# -- small helpers -------------------------------------------------------------------------------

def stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "mean": statistics.fmean(samples),
            "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0, "samples": samples}


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_ms(x: float) -> str:
    """Milliseconds with a useful precision for phase figures (0.4 ms, 12 ms)."""
    ms = x * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def fmt_spread(st: dict[str, Any]) -> str:
    if not st or st.get("n", 0) == 0:
        return "-"
    if st["n"] == 1:
        return f"{fmt_s(st['median'])} (n=1)"
    return f"{fmt_s(st['median'])} [{fmt_s(st['min'])}..{fmt_s(st['max'])}, n={st['n']}]"


def pressure() -> dict[str, float]:
    """Linux PSI: share of the last 60 s in which some task waited for CPU / for I/O."""
    out = {}
    for what in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{what}") as f:
                line = f.readline()
            out[what] = float(line.split("avg60=")[1].split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return out


def fmt_load(x: Any) -> str:
    return "/".join(f"{v:.2f}" for v in x) if x else "?"


class CmdError(RuntimeError):
    pass


def run(cmd: list[str], cwd: Path, log: Path | None = None, env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,), capture: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``cmd``; return (wall seconds, result). Output goes to ``log`` (or is captured)."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    full_env.update(NO_COLOR="1", **ENV, **(env or {}))
    out: Any = subprocess.PIPE if capture else (open(log, "ab") if log else subprocess.DEVNULL)  # noqa: SIM115
    try:
        t = time.perf_counter()
        res = subprocess.run(cmd, check=False, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.PIPE, env=full_env)
        elapsed = time.perf_counter() - t
    finally:
        if not capture and log:
            out.close()
    if res.returncode not in ok_codes:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise CmdError(f"{' '.join(cmd[:4])}... in {cwd} exited {res.returncode}: "
                       f"{err[-1] if err else '(no stderr)'}")
    return elapsed, res


def retry_once(what: str, fn: Callable[[], Any], errors: list[str]) -> Any:
    """Other engineers edit pkiascode/ while this runs: a failure is retried once, then recorded."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        msg = f"{what}: {e}"
        print(f"  ! {msg}; retrying once", file=sys.stderr)
        time.sleep(2)
        try:
            return fn()
        except Exception as e2:  # noqa: BLE001
            errors.append(f"{what}: {e2}")
            print(f"  ! {what} failed again: {e2}", file=sys.stderr)
            return None


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def new_project(root: Path, name: str, toml_text: str | None, *, example: str | None = None) -> Path:
    """A fresh git repository made by `pki init`, with ``toml_text`` as its pki.toml."""
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    cmd = [PKI, "init", str(d)] + (["--example", example] if example else [])
    run(cmd, cwd=root)
    if toml_text is not None:
        (d / "pki.toml").write_text(toml_text, encoding="utf-8")
    return d


def tree_size(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.is_file())


# -- the benchmark -------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.reps = args.reps or (1 if self.quick else 21)
        self.n_plan = args.plan_certs or (1000 if self.quick else 10_000)
        self.n_apply = args.apply_leaves or (200 if self.quick else 1000)
        self.work = Path(tempfile.mkdtemp(prefix="pki-bench-", dir=args.workdir))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.errors: list[str] = []
        # An installed pkiascode has .pyc files; a dev shell may set PYTHONDONTWRITEBYTECODE=1, which
        # would make every timed `pki` recompile its modules. Cache byte-code under the work dir instead
        # (nothing is written into the source tree); warm_up() fills it before anything is timed.
        ENV["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
        self.results: dict[str, Any] = {"meta": self.meta(), "context": {}, "targets": {}, "profiles": {},
                                        "errors": self.errors}

    def meta(self) -> dict[str, Any]:
        def out(cmd: list[str]) -> str:
            try:
                return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO).stdout.strip()
            except OSError:
                return ""
        crypto = out([PY, "-c", "import cryptography; print(cryptography.__version__)"])
        tomli = out([PY, "-c", ("import tomli, tomli._parser as p; print(getattr(tomli, '__version__', '?'), "
                               "'compiled' if not p.__file__.endswith('.py') else 'pure-python')")])
        rev = out(["git", "rev-parse", "--short", "HEAD"])
        dirty = bool(out(["git", "status", "--porcelain", "--", "pkiascode", "plugins"]))
        cpu = ""
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        return {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "quick": self.quick,
                "reps": self.reps, "plan_certs": self.n_plan, "apply_leaves": self.n_apply,
                "python": platform.python_version(), "executable": PY, "pki": PKI, "cryptography": crypto,
                "tomli": tomli, "git": out(["git", "--version"]), "cpus": os.cpu_count(), "cpu": cpu,
                "platform": platform.platform(), "pkiascode_rev": rev + ("+dirty" if dirty else ""),
                "workdir": str(self.work), "loadavg_start": os.getloadavg(),
                "pressure_start": pressure(),
                "env_PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"), "workdir_fs": out(["stat", "-f", "-c", "%T", str(self.work)])}

    # context ------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Fill the byte-code cache (see __init__) by running every kind of process once, untimed."""
        d = new_project(self.work, "warm-up", None)  # pki init's minimal ecdsa pki.toml
        run([PKI, "apply", "--auto-approve"], cwd=d)
        run([PKI, "plan"], cwd=d)
        run([PKI, "--version"], cwd=d)
        spec = self.work / "warm-up-spec.json"
        gen.write_spec(gen.baseline_spec(d / "pki.toml"), spec)
        run([PY, str(HERE / "baseline.py"), str(spec), str(self.work / "warm-up-base")], cwd=self.work)
        run([PY, str(HERE / "phases.py")], cwd=d)
        code = ("import importlib\nfor m in ('cryptography.x509', 'pkiascode.scaffold', 'pyinstrument', 'cProfile', "
                "'pstats'):\n    try: importlib.import_module(m)\n    except Exception: pass")
        run([PY, "-c", code], cwd=self.work)
        run([PY, "-c", "pass"], cwd=self.work)

    def context(self) -> None:
        n = 5 if self.quick else 15
        ctx = self.results["context"]
        empty = new_project(self.work, "empty", "[pki]\ncommit = false\n")
        for label, cmd, cwd in (("python -c pass", [PY, "-c", "pass"], self.work),
                                ("python -c 'import cryptography.x509'", [PY, "-c", "import cryptography.x509"],
                                 self.work),
                                ("pki --version", [PKI, "--version"], self.work),
                                ("pki plan, empty PKI (start-up)", [PKI, "plan"], empty)):
            samples = [run(cmd, cwd=cwd)[0] for _ in range(n)]
            ctx[label] = stats(samples)
            say(f"  context {label}: {fmt_spread(ctx[label])}")

    def disk_probe(self) -> None:
        """How fast this disk creates small files right now (noisy on shared VMs): 1000 x (tmp + rename)."""
        samples = []
        for _ in range(1 if self.quick else 3):
            d = Path(tempfile.mkdtemp(dir=self.work))
            os.sync()
            t = time.perf_counter()
            for i in range(1000):
                tmp = d / f".f{i}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, b"x" * 1000)
                os.close(fd)
                os.replace(tmp, d / f"f{i}.pem")
            samples.append(time.perf_counter() - t)
        st = stats(samples)
        self.results["context"]["disk: 1000 x (create + rename) in workdir"] = st
        say(f"  context disk probe: {fmt_spread(st)}")

    # targets 1 and 3: pki apply against the baseline script ------------------------------------
    def compare_apply(self, tag: str, toml_text: str, spec_path: Path, reps: int,
                      example: str | None = None, check_commit: bool = False,
                      no_commit_side: bool = False, git_baseline: bool = False) -> dict[str, Any]:
        """``reps`` interleaved rounds of: pki apply, [pki apply --no-commit,] baseline (with
        ``git_baseline``: the script, then ``git add`` + ``git commit`` of what it wrote, keys ignored)."""
        samples: dict[str, list[float]] = {"pki": [], "baseline": [], "nocommit": []}
        pairs: dict[str, list[float]] = {"pki": [], "nocommit": []}
        base_inner: list[dict[str, Any]] = []
        files: dict[str, int] = {}

        def pki_side(i: int, side: str) -> float:
            d = new_project(self.work, f"{tag}-{side}-{i}", toml_text, example=example)
            os.sync()  # flush what earlier runs left dirty, so its write-back does not land in this timing
            cmd = [PKI, "apply", "--auto-approve"] + (["--no-commit"] if side == "nocommit" else [])
            el, _ = run(cmd, cwd=d, log=self.logs / f"{tag}-{side}-{i}.log")
            if check_commit and side != "nocommit":
                head = subprocess.run(["git", "log", "--oneline", "-1"], check=False, cwd=d, capture_output=True,
                                      text=True).stdout.strip()
                if "pki apply" not in head:
                    raise CmdError(f"no pki apply commit in {d} ({head!r})")
            files[side] = tree_size(d / "state") + tree_size(d / ".pki" / "keys")
            return el  # (projects are removed at the end: mass deletes mid-run slow down later writes)

        def base_side(i: int) -> float:
            out = self.work / f"{tag}-base-{i}"
            if git_baseline:  # (not timed: a repository that ignores the keys, as the user's would)
                out.mkdir()
                run(["git", "init", "-q"], cwd=out)
                (out / ".gitignore").write_text("*-key.pem\n")
            os.sync()
            el, r = run([PY, str(HERE / "baseline.py"), str(spec_path), str(out)], cwd=self.work, capture=True)
            if git_baseline:
                el += run(["git", "add", "-A"], cwd=out)[0]
                el += run(["git", "commit", "-q", "-m", "certificates"], cwd=out)[0]
            base_inner.append(json.loads(r.stdout))
            files["baseline"] = tree_size(out) - (tree_size(out / ".git") if git_baseline else 0)
            return el

        for i in range(reps):
            got: dict[str, float | None] = {}
            # interleaved, so drift in the machine's load hits every side alike
            got["pki"] = retry_once(f"{tag} pki apply #{i}", functools.partial(pki_side, i, "pki"), self.errors)
            if no_commit_side:
                got["nocommit"] = retry_once(f"{tag} --no-commit apply #{i}", functools.partial(pki_side, i, "nocommit"),
                                             self.errors)
            got["baseline"] = retry_once(f"{tag} baseline #{i}", functools.partial(base_side, i), self.errors)
            for side, v in got.items():
                if v is not None:
                    samples[side].append(v)
            for side in ("pki", "nocommit"):
                if got.get(side) is not None and got["baseline"] is not None:
                    pairs[side].append(got[side] / got["baseline"])  # type: ignore[operator]
            say(f"  rep {i + 1}/{reps}: " + ", ".join(f"{k} {fmt_s(v)}" for k, v in got.items()))

        def phases(*extra: str) -> dict[str, Any]:
            d = new_project(self.work, f"{tag}-phases{''.join(extra)}", toml_text, example=example)
            os.sync()
            _, r = run([PY, str(HERE / "apply_phases.py"), "--auto-approve", *extra], cwd=d, capture=True)
            line = [ln for ln in r.stdout.decode(errors="replace").splitlines() if ln.startswith("APPLY-PHASES ")]
            return json.loads(line[-1][len("APPLY-PHASES "):])

        apply_phases = retry_once(f"{tag} apply phases", phases, self.errors)
        res: dict[str, Any] = {"pki_apply": stats(samples["pki"]), "baseline": stats(samples["baseline"]),
                               "pki_phases": apply_phases,
                               "files_written": files, "pair_ratios": stats(pairs["pki"])}
        res["baseline_phases"] = {k: statistics.median(x[k] for x in base_inner) for k in base_inner[0]} \
            if base_inner else {}
        res["ratio"] = (res["pki_apply"]["median"] / res["baseline"]["median"]) \
            if samples["pki"] and samples["baseline"] else None
        if no_commit_side:
            res["pki_phases_no_commit"] = retry_once(f"{tag} apply --no-commit phases",
                                                     functools.partial(phases, "--no-commit"), self.errors)
            res["no_commit"] = {"pki_apply": stats(samples["nocommit"]), "pair_ratios": stats(pairs["nocommit"]),
                                "ratio": (statistics.median(samples["nocommit"]) / res["baseline"]["median"])
                                if samples["nocommit"] and samples["baseline"] else None}
        return res

    def target_kthw(self) -> None:
        for key, tag, what, toml_path in (
                ("1_kthw_apply", "kthw", "the shipped set", REPO / "pki.toml"),
                ("1b_kthw_cfssl", "kthw-cfssl", "the CFSSL-era set (all RSA-2048)", self.work / "kthw-cfssl.toml")):
            say(f"target 1: Kubernetes the Hard Way, {what}: pki apply vs serial cryptography script")
            if tag == "kthw-cfssl":
                toml_path.write_text(gen.cfssl_era_toml(), encoding="utf-8")
            spec = gen.baseline_spec(toml_path)
            spec_path = self.work / f"{tag}-spec.json"
            gen.write_spec(spec, spec_path)
            res = self.compare_apply(tag, toml_path.read_text(encoding="utf-8"), spec_path, self.reps,
                                     example="kubernetes-the-hard-way" if tag == "kthw" else None, check_commit=True)
            res.update(set=what, key_types=gen.key_type_counts(spec), entries=len(spec["entries"]),
                       target="ratio <= 1.00")
            res["pass"] = res["ratio"] is not None and res["ratio"] <= 1.0
            self.results["targets"][key] = res

    def target_apply_ecdsa(self) -> None:
        n = self.n_apply
        say(f"target 3: pki apply of 1 authority + {n} ecdsa-p256 leaves vs a script + git add + git commit")
        toml_text = gen.bench_toml(n)
        tmp_toml = self.work / f"apply{n}.toml"
        tmp_toml.write_text(toml_text, encoding="utf-8")
        spec = gen.baseline_spec(tmp_toml)
        spec_path = self.work / f"apply{n}-spec.json"
        gen.write_spec(spec, spec_path)
        res = self.compare_apply(f"apply{n}", toml_text, spec_path, max(1, min(self.reps, 5)), check_commit=True,
                                 no_commit_side=True, git_baseline=True)
        res.update(leaves=n, key_types=gen.key_type_counts(spec), target="ratio <= 1.00")
        res["pass"] = res["ratio"] is not None and res["ratio"] <= 1.0
        self.results["targets"]["3_apply_ecdsa"] = res

    # target 2 -----------------------------------------------------------------------------------
    def target_plan_noop(self) -> Path | None:
        n = self.n_plan
        say(f"target 2: no-op pki plan over 1 authority + {n} certificates")
        toml_text = gen.bench_toml(n)
        res: dict[str, Any] = {"certificates": n, "pki_toml_bytes": len(toml_text.encode())}
        self.results["targets"]["2_plan_noop"] = res

        def setup() -> tuple[Path, float]:
            d = new_project(self.work, f"plan{n}", toml_text)
            run(["git", "add", "pki.toml", ".gitignore"], cwd=d)  # (committed, so that a clone has them)
            run(["git", "commit", "-q", "-m", "pki.toml"], cwd=d)
            say(f"  setting up: pki apply of {n + 1} objects (once; not a target)")
            el, _ = run([PKI, "apply", "--auto-approve"], cwd=d, log=self.logs / f"plan{n}-setup.log")
            os.sync()
            return d, el

        got = retry_once(f"plan{n} setup: pki apply of {n + 1} objects", setup, self.errors)
        if got is None:
            res["pass"] = False
            return None
        d, setup_s = got
        res["setup_apply_s"] = setup_s
        say(f"  setup apply took {fmt_s(setup_s)}")
        cache = d / ".pki" / "cache"
        cmd = [PKI, "plan", "--detailed-exitcode"]

        def plan_once() -> float:
            el, r = run(cmd, cwd=d, ok_codes=(0, 2), capture=True)
            if r.returncode != 0:
                raise CmdError(f"pki plan in {d} is not a no-op (exit {r.returncode}): "
                               f"{r.stdout.decode(errors='replace').strip().splitlines()[-1:]}")
            return el

        reps = min(max(self.reps, 3), 7) if not self.quick else 2
        memo = cache / "noop.json"

        def timed(label: str, prepare: Callable[[], None]) -> list[float]:
            out: list[float] = []
            for _ in range(reps):
                prepare()
                x = retry_once(f"plan {label}", plan_once, self.errors)
                if x is not None:
                    out.append(x)
            return out

        # cold: a fresh clone without .pki/ state (what every CI job sees), its key store reachable
        # (the local keys copied in, as a CI job reaches Vault): nothing remembered, nothing in the
        # page cache of the clone's files but what git checkout just wrote
        clone = self.work / f"plan{n}-clone"

        def fresh_clone() -> None:
            shutil.rmtree(clone, ignore_errors=True)
            run(["git", "clone", "-q", str(d), str(clone)], cwd=self.work)
            shutil.copytree(d / ".pki" / "keys", clone / ".pki" / "keys")
            os.chmod(clone / ".pki", 0o700)

        def plan_in_clone() -> float:
            el, r = run(cmd, cwd=clone, ok_codes=(0, 2), capture=True)
            if r.returncode != 0:
                raise CmdError(f"pki plan in a fresh clone is not a no-op (exit {r.returncode})")
            return el

        cold = []
        for _ in range(reps):
            fresh_clone()
            x = retry_once("plan cold", plan_in_clone, self.errors)
            if x is not None:
                cold.append(x)
        # no memo: noop.json gone (after an apply the memo is invalid and the next plan takes this
        # path, then remembers)
        nomemo = timed("no memo", lambda: memo.unlink(missing_ok=True))
        retry_once("plan warm-up", plan_once, self.errors)  # remembers the no-op
        warm = timed("warm", lambda: None)
        if not memo.exists():
            self.errors.append("plan warm: .pki/cache/noop.json was not written; the warm figure is not the memo path")
        res["plan_warm"] = stats(warm)
        res["plan_nomemo"] = stats(nomemo)
        res["plan_cold"] = stats(cold)
        say(f"  plan warm {fmt_spread(res['plan_warm'])}; no memo {fmt_spread(res['plan_nomemo'])}; "
            f"cold {fmt_spread(res['plan_cold'])}")

        # breakdown: the steps of Project.plan, timed in one process (bench/phases.py)
        def phases(prepare: Callable[[], None]) -> Callable[[], dict[str, Any]]:
            def go() -> dict[str, Any]:
                prepare()
                _, r = run([PY, str(HERE / "phases.py")], cwd=d, capture=True)
                line = [ln for ln in r.stdout.decode(errors="replace").splitlines() if ln.startswith("PLAN-PHASES ")]
                return json.loads(line[-1][len("PLAN-PHASES "):])
            return go

        res["phases_nomemo"] = retry_once("plan phases (no memo)",
                                          phases(lambda: memo.unlink(missing_ok=True)), self.errors)
        retry_once("plan warm-up", plan_once, self.errors)
        res["phases_warm"] = retry_once("plan phases (warm)", phases(lambda: None), self.errors)
        # breakdown 2: python -X importtime (warm)
        res["imports"] = retry_once("importtime", lambda: self.importtime(d), self.errors)
        # toml parsing alone, for reference: stdlib tomllib vs tomli as installed
        code = ("import time,sys;d=open('pki.toml','rb').read().decode();import tomllib,tomli,hashlib;"
                "t=time.perf_counter();tomllib.loads(d);a=time.perf_counter()-t;"
                "t=time.perf_counter();tomli.loads(d);b=time.perf_counter()-t;"
                "t=time.perf_counter();hashlib.sha256(d.encode()).hexdigest();c=time.perf_counter()-t;"
                "print(a,b,c)")
        try:
            _, r = run([PY, "-c", code], cwd=d, capture=True)
            a, b, c = (float(x) for x in r.stdout.split())
            res["parse_reference"] = {"tomllib_s": a, "tomli_s": b, "sha256_s": c}
        except (CmdError, ValueError) as e:
            self.errors.append(f"parse reference: {e}")
        res["target"] = "warm median < 0.50 s, cold median < 1.50 s"
        res["pass"] = bool(warm) and statistics.median(warm) < 0.5
        res["pass_cold"] = bool(cold) and statistics.median(cold) < 1.5
        return d

    # row 4: Vault Transit ---------------------------------------------------------------------
    def target_vault(self) -> None:
        n = 100
        rounds = 2 if self.quick else 5
        say(f"row 4: {n} leaves under a Vault Transit authority vs a local key (bench/bench_vault.py, {rounds} rounds)")
        res: dict[str, Any] = {"target": "report only (no goal)"}
        self.results["targets"]["4_vault_transit"] = res

        def go() -> dict[str, Any]:
            _, r = run([PY, str(HERE / "bench_vault.py"), "--count", str(n), "--rounds", str(rounds), "--json"],
                       cwd=self.work, capture=True)
            line = [ln for ln in r.stdout.decode(errors="replace").splitlines() if ln.startswith("VAULT-BENCH ")]
            if not line:
                raise CmdError("bench_vault.py printed no VAULT-BENCH line")
            return json.loads(line[-1][len("VAULT-BENCH "):])

        got = retry_once("vault transit", go, self.errors)
        if got is not None:
            res.update(got)
            if "skipped" in got:
                say(f"  skipped: {got['skipped']}")
            else:
                say(f"  Transit {got['transit_per_cert_s'] * 1000:.3f} ms/cert, local "
                    f"{got['local_per_cert_s'] * 1000:.3f} ms/cert ({got['ratio']:.1f}x)")

    def importtime(self, d: Path) -> dict[str, Any]:
        _, r = run([PY, "-X", "importtime", PKI, "plan"], cwd=d, capture=True)
        top: list[tuple[int, str]] = []
        total = 0
        for line in r.stderr.decode(errors="replace").splitlines():
            if not line.startswith("import time:") or "imported package" in line:
                continue
            _self_us, cum_us, name = line.split(":", 1)[1].split("|")
            depth = (len(name) - len(name.lstrip()) - 1) // 2
            if depth == 0:
                top.append((int(cum_us), name.strip()))
                total += int(cum_us)
        top.sort(reverse=True)
        return {"total_s": total / 1e6, "top": [{"module": m, "s": us / 1e6} for us, m in top[:15]]}

    # profiles -----------------------------------------------------------------------------------
    def profile(self, plan_dir: Path | None, *, apply: bool, kthw: bool) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        prof = self.results["profiles"]
        has_pyinstrument = subprocess.run([PY, "-c", "import pyinstrument"], check=False,
                                          capture_output=True).returncode == 0
        if plan_dir is not None:
            def plan_cprofile(tag: str) -> str:
                out = RESULTS / f"plan-{tag}.prof"
                txt = RESULTS / f"plan-{tag}.txt"
                run([PY, str(HERE / "prof.py"), "cprofile", str(out), str(txt), "--", "plan", "--detailed-exitcode"],
                    cwd=plan_dir, capture=True)
                return str(txt)

            prof["plan_warm_cprofile"] = retry_once("profile plan warm", lambda: plan_cprofile("warm"), self.errors)
            shutil.rmtree(plan_dir / ".pki" / "cache", ignore_errors=True)
            prof["plan_nomemo_cprofile"] = retry_once("profile plan, no memo", lambda: plan_cprofile("nomemo"),
                                                      self.errors)
            if has_pyinstrument:
                def plan_pyi() -> str:
                    out = RESULTS / "plan-warm-pyinstrument.txt"
                    run([PY, str(HERE / "prof.py"), "pyinstrument", str(out), "--", "plan"], cwd=plan_dir, capture=True)
                    return str(out)
                prof["plan_warm_pyinstrument"] = retry_once("pyinstrument plan", plan_pyi, self.errors)
        n = self.n_apply

        def apply_profile(tool: str) -> str:
            d = new_project(self.work, f"prof-apply{n}-{tool}", gen.bench_toml(n))
            ext = "txt" if tool == "pyinstrument" else "prof"
            out = RESULTS / f"apply{n}-{tool}.{ext}"
            extra = [str(RESULTS / f"apply{n}-cprofile.txt")] if tool == "cprofile" else []
            run([PY, str(HERE / "prof.py"), tool, str(out), *extra, "--", "apply", "--auto-approve"], cwd=d,
                capture=True)
            return str(out if tool == "pyinstrument" else extra[0])

        if apply:
            prof["apply_cprofile"] = retry_once("profile apply", lambda: apply_profile("cprofile"), self.errors)
            if has_pyinstrument:
                prof["apply_pyinstrument"] = retry_once("pyinstrument apply", lambda: apply_profile("pyinstrument"),
                                                        self.errors)
        if has_pyinstrument and kthw:
            def kthw_profile() -> str:
                d = new_project(self.work, "prof-kthw", (REPO / "pki.toml").read_text(encoding="utf-8"),
                                example="kubernetes-the-hard-way")
                out = RESULTS / "kthw-pyinstrument.txt"
                run([PY, str(HERE / "prof.py"), "pyinstrument", str(out), "--", "apply", "--auto-approve"], cwd=d,
                    capture=True)
                return str(out)
            prof["kthw_pyinstrument"] = retry_once("pyinstrument kthw", kthw_profile, self.errors)

    # report -------------------------------------------------------------------------------------
    def table(self) -> str:
        r = self.results
        m = r["meta"]
        lines = [f"pkiascode benchmark ({'quick' if m['quick'] else 'full'}) {m['when']}  rev {m['pkiascode_rev']}",
                 (f"  {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, cryptography {m['cryptography']}, "
                 f"tomli {m['tomli']}, {m['git']}"),
                 f"  work dir {m['workdir']} ({m.get('workdir_fs', '?')})",
                 (f"  load average at start {fmt_load(m.get('loadavg_start'))}, at end {fmt_load(m.get('loadavg_end'))}"
                 " (2 CPUs: above ~0.5 someone else is running)"),
                 f"  pressure (PSI some avg60, %) at start {m.get('pressure_start')}, at end {m.get('pressure_end')}",
                 "  times are wall-clock of whole processes (Python start-up included); median [min..max, n]", ""]
        lines.append("context")
        for label, st in r["context"].items():
            lines.append(f"  {label:<40} {fmt_spread(st)}")
        disk = r["context"].get("disk: 1000 x (create + rename) in workdir") or {}
        slow_disk = bool(disk.get("n") and disk["median"] > 0.3)
        for t in r["targets"].values():
            bp = t.get("baseline_phases") or {}
            if bp.get("entries") and bp.get("write", 0) / bp["entries"] > 0.0003:  # > 0.3 ms per entry written
                slow_disk = True
        if slow_disk:
            lines.append(f"  WARNING: the disk was slow during this run (probe: {fmt_s(disk.get('median'))} per 1000 file "
                         "creations, ~0.05-0.1 s when quiet; or the baseline's writes took > 0.3 ms a file): the apply")
            lines.append("  figures of target 3 are dominated by file creation on both sides. Rerun when the "
                         "machine is quiet, or add")
            lines.append("  --workdir /dev/shm (tmpfs) for a CPU-bound comparison.")
        lines.append("")
        w = 44
        lines.append(f"{'target':<{w}} {'pkiascode':<34} {'baseline':<34} {'ratio':>7}  {'goal':<12} result")
        t = r["targets"]

        def pair_text(x: dict[str, Any]) -> str:
            pr = x.get("pair_ratios") or {}
            if not pr.get("n"):
                return "per-pair ratios: -"
            return (f"per-pair ratios (pki/baseline of each interleaved pair): median {pr['median']:.2f}x, "
                    f"{pr['min']:.2f}x..{pr['max']:.2f}x")

        def nocommit_row(x: dict[str, Any]) -> None:
            nc = x.get("no_commit")
            if nc:
                row("    for reference: pki apply --no-commit", fmt_spread(nc["pki_apply"]), "(same baseline)",
                    nc["ratio"], "(no git)", None)

        def baseline_text(result: dict[str, Any]) -> list[str]:
            """Where the baseline script's own time went, when it reported it."""
            bp = result.get("baseline_phases") or {}
            if not bp:
                return []
            return [f"    baseline in-process: import {fmt_s(bp.get('import'))}, keygen {fmt_s(bp.get('keygen'))}, "
                    f"sign {fmt_s(bp.get('sign'))}, write {fmt_s(bp.get('write'))}"]

        def phases_text(ph: dict[str, Any] | None, title: str) -> list[str]:
            if not ph:
                return []
            keys = [k for k, v in ph.items() if isinstance(v, float) and k not in ("total_in_process", "cli main total")]
            items = [f"{'>' * ((len(k) - len(k.lstrip())) // 2)}{k.strip()} {fmt_ms(ph[k])}" for k in keys]
            out = [(f"    {title}: one run, in-process {fmt_s(ph.get('total_in_process'))} "
                    "('>' = part of the phase before)")]
            if ph.get("missing"):
                out.append(f"     NOT FOUND in pkiascode (renamed?): {', '.join(ph['missing'])}")
            if ph.get("error"):
                out.append(f"     ERROR {ph['error']}")
            line = "     "
            for it in items:
                if len(line) + len(it) > 150:
                    out.append(line.rstrip(", "))
                    line = "     "
                line += it + ", "
            out.append(line.rstrip(", "))
            return out

        def row(label: str, pki: str, base: str, ratio: float | None, goal: str, ok: bool | None,
                disk_bound: bool = False) -> None:
            res = "PASS" if ok else ("MISS" if ok is not None else "n/a")
            if disk_bound and ok is not None:
                res += " (disk-bound: see WARNING)"
            lines.append(f"{label:<{w}} {pki:<34} {base:<34} {(f'{ratio:.2f}x' if ratio else '-'):>7}  "
                         f"{goal:<12} {res}")

        for key, label in (("1_kthw_apply", "1 KTHW apply, shipped set"), ("1b_kthw_cfssl", "1b KTHW apply, CFSSL-era")):
            k = t.get(key)
            if not k:
                continue
            kinds = ", ".join(f"{v} {c}" for c, v in k["key_types"].items())
            row(label, fmt_spread(k["pki_apply"]), fmt_spread(k["baseline"]), k["ratio"], "<= 1.00x", k["pass"])
            lines.append(f"    set: {kinds} ({k.get('set')}, both sides)")
            lines.append(f"    {pair_text(k)}")
            lines.extend(phases_text(k.get("pki_phases"), "pki apply phases (bench/apply_phases.py)"))
            lines.extend(baseline_text(k))
        p = t.get("2_plan_noop")
        if p:
            row(f"2 no-op pki plan, {p['certificates']} certs, warm", fmt_spread(p.get("plan_warm", {})), "-", None,
                "< 0.50 s", p.get("pass"))
            row("    same, no memo (noop.json removed)", fmt_spread(p.get("plan_nomemo", {})), "-", None, "(report)",
                None)
            row("    same, cold (fresh clone, no .pki/ state)", fmt_spread(p.get("plan_cold", {})), "-", None,
                "< 1.50 s", p.get("pass_cold"))
            if "setup_apply_s" in p:
                lines.append(f"    setup: pki apply of {p['certificates'] + 1} objects took {fmt_s(p['setup_apply_s'])}; "
                             f"pki.toml is {p['pki_toml_bytes'] / 1e6:.2f} MB")
            for tag, what in (("phases_warm", "warm: the memo holds"), ("phases_nomemo", "no memo")):
                lines.extend(phases_text(p.get(tag), f"pki plan phases, {what} (bench/phases.py)"))
            pr = p.get("parse_reference")
            if pr:
                lines.append(f"    reference: tomllib.loads {fmt_s(pr['tomllib_s'])}, tomli.loads {fmt_s(pr['tomli_s'])}, "
                             f"sha256 of the file {fmt_s(pr['sha256_s'])}")
            im = p.get("imports")
            if im:
                lines.append(f"    imports (warm, -X importtime, top-level cumulative {fmt_s(im['total_s'])}): "
                             + ", ".join(f"{x['module']} {fmt_s(x['s'])}" for x in im["top"][:8]))
        a = t.get("3_apply_ecdsa")
        if a:
            row(f"3 apply {a['leaves']} ecdsa-p256 leaves + CA", fmt_spread(a["pki_apply"]), fmt_spread(a["baseline"]),
                a["ratio"], "<= 1.00x", a["pass"], slow_disk)
            lines.append("    baseline: the script, then git add + git commit of the certificates and CRL")
            lines.append(f"    {pair_text(a)}")
            nocommit_row(a)
            lines.extend(phases_text(a.get("pki_phases"), "pki apply phases (bench/apply_phases.py)"))
            lines.extend(phases_text(a.get("pki_phases_no_commit"), "pki apply --no-commit phases"))
            lines.extend(baseline_text(a))
        v = t.get("4_vault_transit")
        if v:
            if "skipped" in v:
                lines.append(f"{'4 Vault Transit authority, 100 leaves':<{w}} skipped: {v['skipped']}")
            elif "transit_per_cert_s" in v:
                row(f"4 Vault Transit authority, {v['count']} leaves", f"{v['transit_per_cert_s'] * 1000:.3f} ms/cert",
                    f"{v['local_per_cert_s'] * 1000:.3f} ms/cert (local key)", v["ratio"], "(report)", None)
                lines.append(f"    {v['count']} certificates per round, median of {v['rounds']} interleaved rounds "
                             f"(Transit {fmt_s(v['transit_median_s'])}, local {fmt_s(v['local_median_s'])}); "
                             f"one Transit sign call per certificate; {v['server']}")
            else:
                lines.append(f"{'4 Vault Transit authority, 100 leaves':<{w}} failed: see errors")
        if r["profiles"]:
            lines.append("")
            lines.append("profiles: " + ", ".join(str(Path(v).relative_to(REPO)) if v and str(v).startswith(str(REPO))
                                                   else str(v) for v in r["profiles"].values()))
        if r["errors"]:
            lines.append("")
            lines.append("errors:")
            lines += [f"  {e}" for e in r["errors"]]
        return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 1 repetition (a smoke run)")
    ap.add_argument("--reps", type=int, help="repetitions per side for target 1 (default 21; quick 1); "
                                             "target 2 uses 3..7 timed plans, target 3 min(reps, 5)")
    ap.add_argument("--plan-certs", type=int, help="certificates for target 2 (default 10000; quick 1000)")
    ap.add_argument("--apply-leaves", type=int, help="leaves for target 3 (default 1000; quick 200)")
    ap.add_argument("--only", choices=["1", "2", "3", "4"], action="append",
                    help="run only these rows (1 KTHW apply, 2 no-op plan, 3 apply of 1,000 leaves, 4 Vault Transit); "
                         "repeatable")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiles (targets 1-3)")
    ap.add_argument("--workdir", help="where to make the temporary projects (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = ap.parse_args()

    b = Bench(args)
    only = set(args.only or ["1", "2", "3", "4"])
    t0 = time.perf_counter()
    say(f"work dir {b.work}")
    plan_dir = None
    try:
        b.warm_up()
        b.context()
        b.disk_probe()
        if "1" in only:
            b.target_kthw()
        if "3" in only:
            b.target_apply_ecdsa()
        if "2" in only:
            plan_dir = b.target_plan_noop()
        if "4" in only:
            b.target_vault()
        if not args.no_profile and only & {"1", "2", "3"}:
            say("profiling (bench/results/)")
            b.profile(plan_dir, apply="3" in only, kthw="1" in only)
    finally:
        b.results["meta"]["duration_s"] = time.perf_counter() - t0
        b.results["meta"]["loadavg_end"] = os.getloadavg()
        b.results["meta"]["pressure_end"] = pressure()
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(b.results, indent=2, default=str) + "\n")
        text = b.table()
        (RESULTS / "latest.txt").write_text(text + "\n")
        print(text)
        if not args.keep:
            shutil.rmtree(b.work, ignore_errors=True)
        else:
            say(f"kept {b.work}")
    say(f"done in {time.perf_counter() - t0:.0f} s; results in {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
