"""A PKCS#11 module is native code that runs with the PIN in its process (issue 10.5): one committed
to the repository, as a pull request could, is refused before it is loaded. "Never loaded" is
checked with the dynamic loader's own record (``LD_DEBUG=files``), which names every shared object a
process opens; the same check sees the module when it is installed outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import SMALL_PKI, assert_one_line, clean_env, commit_all, git_init, pki_command, unavailable, \
    write_project

SOFTHSM = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
           "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/lib64/pkcs11/libsofthsm2.so",
           "/usr/lib64/softhsm/libsofthsm2.so")


@pytest.fixture
def module() -> str:
    found = next((m for m in SOFTHSM if os.path.exists(m)), None)
    if found is None:
        unavailable("SoftHSM2 is not installed (a real PKCS#11 module to copy)")
    return found


def hsm_repo(directory: Path, module_line: str) -> Path:
    git_init(directory)
    write_project(directory, f'[backend.hsm]\nplugin = "pkcs11"\n{module_line}\ntoken = "pki-ca"\n\n'
                  + SMALL_PKI.replace("[defaults]\n", '[defaults]\nbackend = "hsm"\n'))
    return directory


def run_traced(repo: Path, trace: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], str]:
    """``pki ARGS`` in ``repo`` with the loader tracing every object it opens; (result, the trace)."""
    trace.mkdir(exist_ok=True)
    environment = clean_env(PKI_PKCS11_PIN="1234", LD_DEBUG="files", LD_DEBUG_OUTPUT=str(trace / "ld"), **(env or {}))
    done = subprocess.run(pki_command() + ["-C", str(repo), *args], capture_output=True, text=True, env=environment,
                          cwd=repo, timeout=120)
    text = "".join(p.read_text(errors="replace") for p in sorted(trace.iterdir()))
    return done, text


@pytest.fixture
def token(tmp_path) -> dict[str, str]:
    """A SoftHSM2 token "pki-ca" (user PIN 1234) of this test's own: the environment that reaches it."""
    util = shutil.which("softhsm2-util")
    if util is None:
        unavailable("softhsm2-util is not installed")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    subprocess.run([util, "--init-token", "--free", "--label", "pki-ca", "--so-pin", "5678", "--pin", "1234"],
                   check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    return {"SOFTHSM2_CONF": str(conf)}


def test_a_module_committed_to_the_repository_is_never_loaded(tmp_path, module, token, env):
    repo = hsm_repo(tmp_path / "repo", f'module = "{module}"')
    commit_all(repo, "pki.toml")
    done, trace = run_traced(repo, tmp_path / "trace0", "apply", "--auto-approve", env=token)
    assert done.returncode == 0, done.stderr
    assert os.path.realpath(module) in trace  # the loader's trace names the module it loads

    # the pull request: a module of its own, committed beside pki.toml
    (repo / "vendor").mkdir()
    planted = repo / "vendor" / "pkcs11.so"
    shutil.copy(module, planted)  # a working module: loading it would succeed
    (repo / "pki.toml").write_text((repo / "pki.toml").read_text().replace(f'module = "{module}"',
                                                                          f'module = "{planted}"'))
    for i, command in enumerate((("plan",), ("apply", "--auto-approve")), 1):
        done, trace = run_traced(repo, tmp_path / f"trace{i}", *command, env=token)
        line = assert_one_line(done.stderr.strip(), "1234")
        assert done.returncode == 1 and line == (
            f"Error: backend hsm: refusing PKCS#11 module {planted}: it is inside the repository {repo}, where a "
            "commit could replace it; install the module outside it (or name it in an environment variable with "
            "module_env)"), done.stderr
        assert "pkcs11.so" not in trace and "libsofthsm2" not in trace


@pytest.mark.parametrize("spelling", ["symlink", "dotdot", "proc"])
def test_other_spellings_of_a_path_in_the_repository(tmp_path, module, env, spelling):
    repo = tmp_path / "repo"
    (repo / "vendor").mkdir(parents=True)
    planted = repo / "vendor" / "pkcs11.so"
    shutil.copy(module, planted)
    outside = tmp_path / "outside"
    outside.mkdir()
    if spelling == "symlink":  # a link outside pointing into the repository
        (outside / "pkcs11.so").symlink_to(planted)
        path = outside / "pkcs11.so"
    elif spelling == "dotdot":
        path = Path(f"{outside}/../repo/vendor/pkcs11.so")
    else:  # the working directory of the pki process is the repository
        path = Path("/proc/self/cwd/vendor/pkcs11.so")
    hsm_repo(repo, f'module = "{path}"')
    done, trace = run_traced(repo, tmp_path / "trace", "apply", "--auto-approve")
    assert done.returncode == 1 and "it is inside the repository" in done.stderr, done.stderr
    assert "pkcs11.so" not in trace


def test_a_relative_module_path_is_a_config_error(tmp_path, env):
    repo = hsm_repo(tmp_path / "repo", 'module = "vendor/pkcs11.so"')
    done, _ = run_traced(repo, tmp_path / "trace", "validate")
    line = assert_one_line(done.stderr.strip())
    assert done.returncode == 1 and line.startswith(
        "pki.toml:3: backend.hsm.module: must be the absolute path of a PKCS#11 module outside the repository"), line


def test_the_module_from_the_environment_or_outside_the_repository_is_loaded(tmp_path, module, env):
    """The control: the same trace shows the module when it is outside the repository."""
    outside = tmp_path / "opt" / "hsm-vendor"
    outside.mkdir(parents=True)
    installed = outside / "pkcs11.so"
    shutil.copy(module, installed)
    repo = hsm_repo(tmp_path / "repo", f'module = "{installed}"')
    done, trace = run_traced(repo, tmp_path / "trace1", "apply", "--auto-approve")
    assert "it is inside the repository" not in done.stderr
    assert str(installed) in trace  # loaded (the token "pki-ca" does not exist here: the apply fails after)

    repo2 = hsm_repo(tmp_path / "repo2", 'module_env = "HSM_MODULE"')
    done, trace = run_traced(repo2, tmp_path / "trace2", "apply", "--auto-approve", env={"HSM_MODULE": str(installed)})
    assert "it is inside the repository" not in done.stderr and str(installed) in trace
    # the environment cannot name a module inside the repository either
    planted = repo2 / "pkcs11.so"
    shutil.copy(module, planted)
    done, trace = run_traced(repo2, tmp_path / "trace3", "apply", "--auto-approve", env={"HSM_MODULE": str(planted)})
    assert done.returncode == 1 and "it is inside the repository" in done.stderr and str(planted) not in trace
