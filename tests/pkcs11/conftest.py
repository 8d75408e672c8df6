"""SoftHSM2 for the pkcs11 tests: a private configuration and token directory per process.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, when the library is first loaded into a process, and sees only
the tokens that exist at that moment. So the configuration is pointed at a fresh directory as soon as
this conftest is loaded (``pytest_configure``, before any test here can load the library), and the
tokens are initialised by a session fixture that every test here uses, before the first store
connects. Under pytest-xdist every worker is its own process and gets its own directory.

Two tokens: ``pki-test`` for the keys, and ``pki-fault`` on which no login ever succeeds in this
process, for the wrong-PIN and missing-PIN tests (a PKCS#11 login lasts for the whole process).

Without ``softhsm2-util``, the SoftHSM2 module or python-pkcs11 the tests are skipped on a
workstation and fail when ``$CI`` is set.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from helpers import clean_env, unavailable

TOKEN = "pki-test"
FAULT_TOKEN = "pki-fault"
PIN = "246810"
SO_PIN = "97531"
PIN_ENV = "PKI_PKCS11_PIN"  # the store's default
FAULT_PIN_ENV = "PKI_TEST_FAULT_PIN"

_conf: dict[str, str] = {}


def write_conf(path: str, token_dir: str, *extra: str) -> str:
    """A SoftHSM2 configuration file for ``token_dir`` (plus ``extra`` lines); returns ``path``."""
    with open(path, "w") as f:
        f.write(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n"
                "slots.removable = false\n" + "".join(f"{line}\n" for line in extra))
    return path


@dataclasses.dataclass(frozen=True)
class SoftHSM:
    module: str
    conf: str
    token_dir: str
    util: str
    token: str = TOKEN
    fault_token: str = FAULT_TOKEN
    pin: str = PIN
    so_pin: str = SO_PIN
    pin_env: str = PIN_ENV
    fault_pin_env: str = FAULT_PIN_ENV

    def settings(self, **overrides: str) -> dict[str, str]:
        return {"module": self.module, "token": self.token, "pin_env": self.pin_env, **overrides}


def pytest_configure(config: pytest.Config) -> None:
    if _conf:
        return
    base = tempfile.mkdtemp(prefix=f"pki-softhsm-{os.getpid()}-")
    token_dir = os.path.join(base, "tokens")
    os.mkdir(token_dir, 0o700)
    conf = write_conf(os.path.join(base, "softhsm2.conf"), token_dir)
    _conf.update(base=base, conf=conf, token_dir=token_dir, previous=os.environ.get("SOFTHSM2_CONF", ""))
    os.environ["SOFTHSM2_CONF"] = conf


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _conf:
        return
    shutil.rmtree(_conf["base"], ignore_errors=True)
    if _conf["previous"]:
        os.environ["SOFTHSM2_CONF"] = _conf["previous"]
    else:
        os.environ.pop("SOFTHSM2_CONF", None)
    _conf.clear()


@pytest.fixture(scope="session", autouse=True)
def softhsm() -> Iterator[SoftHSM]:
    try:
        import pkcs11  # python-pkcs11

        from pkiascode_pkcs11._token import DEFAULT_MODULES
    except ImportError as exc:
        unavailable(f"python-pkcs11 is not installed ({exc})")
    util = shutil.which("softhsm2-util")
    module = next((m for m in DEFAULT_MODULES if os.path.exists(m)), None)
    if util is None or module is None:
        unavailable("SoftHSM2 is not installed (softhsm2-util and libsofthsm2.so)")
    if pkcs11._loaded:  # loaded before our configuration: it would not see our tokens
        pytest.fail("the PKCS#11 module was loaded before tests/pkcs11/conftest.py set SOFTHSM2_CONF",
                    pytrace=False)
    assert os.environ.get("SOFTHSM2_CONF") == _conf["conf"]
    for label in (TOKEN, FAULT_TOKEN):
        subprocess.run([util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", PIN],
                       check=True, capture_output=True)
    previous = os.environ.get(PIN_ENV)
    os.environ[PIN_ENV] = PIN
    yield SoftHSM(module=module, conf=_conf["conf"], token_dir=_conf["token_dir"], util=util)
    if previous is None:
        os.environ.pop(PIN_ENV, None)
    else:
        os.environ[PIN_ENV] = previous


# -- a SoftHSM2 of its own, for the `pki` command run as a child process --------------------------

@dataclasses.dataclass(frozen=True)
class PrivateHSM:
    """A SoftHSM2 configuration, token directory and initialised token that belong to one test (or
    one module), for child processes only: the `pki` CLI, pkcs11-tool, a python-pkcs11 inspector.

    This process never loads it (SoftHSM2 reads ``SOFTHSM2_CONF`` once per process), so the tokens of
    the ``softhsm`` fixture are untouched and each scenario starts from an empty token.
    """

    module: str
    util: str
    conf: str
    token_dir: str
    token: str
    pin: str
    so_pin: str

    def restricted_conf(self, *disabled: str) -> str:
        """Another configuration of the same token directory in which the token lacks ``disabled``
        mechanisms (SoftHSM 2.6 ignores the first entry of a ``-`` list: hence CKM_MD5 first)."""
        path = os.path.join(os.path.dirname(self.conf), f"softhsm2-without-{'-'.join(disabled).lower()}.conf")
        return write_conf(path, self.token_dir, f"slots.mechanisms = -CKM_MD5,{','.join(disabled)}")

    def env(self, *, conf: str | None = None, **extra: str | None) -> dict[str, str]:
        """The environment of a child process (`helpers.clean_env`): this SoftHSM2 and its PIN in
        $PKI_PKCS11_PIN. ``NAME=None`` removes a variable."""
        env = clean_env(SOFTHSM2_CONF=conf or self.conf, **{PIN_ENV: self.pin})
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env


@pytest.fixture(scope="session")
def private_hsm_factory(softhsm: SoftHSM):
    """``make(directory, token="e2e-ca", pin="e2e-Pin-8172")`` → a `PrivateHSM` under ``directory``."""

    def make(directory: str | os.PathLike[str], token: str = "e2e-ca", pin: str = "e2e-Pin-8172") -> PrivateHSM:
        base = os.fspath(directory)
        token_dir = os.path.join(base, "tokens")
        os.makedirs(token_dir, 0o700)
        conf = write_conf(os.path.join(base, "softhsm2.conf"), token_dir)
        subprocess.run([softhsm.util, "--init-token", "--free", "--label", token, "--so-pin", SO_PIN, "--pin", pin],
                       check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": conf})
        return PrivateHSM(module=softhsm.module, util=softhsm.util, conf=conf, token_dir=token_dir, token=token,
                          pin=pin, so_pin=SO_PIN)

    return make


@pytest.fixture
def private_hsm(private_hsm_factory, tmp_path) -> PrivateHSM:
    """A fresh SoftHSM2 with one empty token, for the `pki` CLI run as a child process."""
    return private_hsm_factory(tmp_path / "softhsm")
