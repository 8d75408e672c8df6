"""Private keys that sign somewhere else: in Vault Transit, on a PKCS#11 token.

`cryptography`'s certificate, CRL and CSR builders accept any subclass of its private-key classes
and call its ``sign()``. `external_key` wraps a backend's signing function in such a subclass, so the
one X.509 module signs the same way whether the key is a local file or lives in an HSM.

The backend's function receives the message and the hash algorithm (``None`` for Ed25519) and
returns the signature in the encoding X.509 uses: PKCS#1 v1.5 for RSA, DER ``ECDSA-Sig-Value`` for
ECDSA, the raw 64 bytes for Ed25519. Every signature is verified against the public key before it is
used, so a wrong key version, a PSS signature or a corrupted reply fails loudly instead of producing
a certificate nobody can verify.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from .errors import KeyNotExportable, SigningError

__all__ = ["SignFunction", "external_key", "ecdsa_raw_to_der", "rsa_digest_info"]

SignFunction = Callable[[bytes, "hashes.HashAlgorithm | None"], bytes]


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    """r||s (as PKCS#11's CKM_ECDSA returns it) to the DER ECDSA-Sig-Value X.509 wants."""
    half = len(raw) // 2
    return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


_DIGEST_INFO_PREFIX = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


def rsa_digest_info(digest: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    """The DER DigestInfo that PKCS#1 v1.5 signs, for tokens that only offer raw CKM_RSA_PKCS."""
    try:
        return _DIGEST_INFO_PREFIX[algorithm.name] + digest
    except KeyError:
        raise SigningError(f"no DigestInfo for hash {algorithm.name}") from None


class _External:
    """Shared behaviour: sign through the backend, verify, never reveal anything."""

    _public: Any
    _sign: SignFunction
    _label: str

    def _init(self, public: Any, sign: SignFunction, label: str) -> None:
        self._public = public
        self._sign = sign
        self._label = label

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise KeyNotExportable(f"{self._label}: the private key stays in its key store")

    def __repr__(self) -> str:
        return f"<external key {self._label}>"

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict) -> Any:
        return self

    def public_key(self) -> Any:
        return self._public

    def __getstate__(self) -> NoReturn:
        self._refuse()

    private_bytes = _refuse
    private_numbers = _refuse


class _ExternalRSA(_External, rsa.RSAPrivateKey):
    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: Any) -> bytes:
        self._refuse()

    def sign(self, data: bytes, pad: Any, algorithm: Any) -> bytes:
        if not isinstance(pad, padding.PKCS1v15):
            raise SigningError(f"{self._label}: only PKCS#1 v1.5 signatures are supported")
        if isinstance(algorithm, utils.Prehashed):
            raise SigningError(f"{self._label}: prehashed input is not supported")
        sig = self._sign(data, algorithm)
        try:
            self._public.verify(sig, data, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SigningError(f"{self._label}: the signature from the key store does not verify "
                               "(wrong key version or padding?)") from None
        return sig


class _ExternalEC(_External, ec.EllipticCurvePrivateKey):
    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def exchange(self, algorithm: Any, peer_public_key: Any) -> bytes:
        self._refuse()

    def sign(self, data: bytes, signature_algorithm: Any) -> bytes:
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            raise SigningError(f"{self._label}: prehashed input is not supported")
        sig = self._sign(data, algorithm)
        try:
            self._public.verify(sig, data, ec.ECDSA(algorithm))
        except InvalidSignature:
            raise SigningError(f"{self._label}: the signature from the key store does not verify") from None
        return sig


class _ExternalEd25519(_External, ed25519.Ed25519PrivateKey):
    private_bytes_raw = _External._refuse

    def sign(self, data: bytes) -> bytes:
        sig = self._sign(data, None)
        try:
            self._public.verify(sig, data)
        except InvalidSignature:
            raise SigningError(f"{self._label}: the signature from the key store does not verify") from None
        return sig


def external_key(
    public_key: CertificateIssuerPublicKeyTypes, sign: SignFunction, *, label: str
) -> CertificateIssuerPrivateKeyTypes:
    """A private-key object whose ``sign()`` calls ``sign`` and verifies the result.

    ``label`` names the key in messages (``"vault:transit/pki-root"``); it must not hold secrets.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        key: Any = _ExternalRSA.__new__(_ExternalRSA)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        key = _ExternalEC.__new__(_ExternalEC)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        key = _ExternalEd25519.__new__(_ExternalEd25519)
    else:
        raise SigningError(f"{label}: unsupported public key type {type(public_key).__name__}")
    key._init(public_key, sign, label)
    return key

