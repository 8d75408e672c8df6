"""Key algorithms by their pki.toml names, and what each means to `cryptography`.

Light on purpose: `cryptography` is imported only inside the functions that need it, so a no-op
``pki plan`` never pays for it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        CertificateIssuerPublicKeyTypes,
    )

__all__ = ["KeyType", "key_type_of", "generate_private_key", "signature_hash"]


class KeyType(str, enum.Enum):
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    ED25519 = "ed25519"

    @property
    def family(self) -> str:
        return self.value.split("-")[0]

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa-")

    @property
    def bits(self) -> int:
        return {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096,
                "ecdsa-p256": 256, "ecdsa-p384": 384, "ed25519": 256}[self.value]

    @property
    def slow_to_generate(self) -> bool:
        """RSA generation takes tens to hundreds of ms: worth a thread each (OpenSSL drops the GIL)."""
        return self.is_rsa


def generate_private_key(key_type: KeyType) -> "CertificateIssuerPrivateKeyTypes":
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type.is_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=key_type.bits)
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


def key_type_of(key: Any) -> KeyType:
    """The KeyType of a public or private key; ValueError for anything we do not issue with."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        try:
            return KeyType(f"rsa-{key.key_size}")
        except ValueError:
            raise ValueError(f"RSA key of {key.key_size} bits is not supported") from None
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        name = {"secp256r1": KeyType.ECDSA_P256, "secp384r1": KeyType.ECDSA_P384}.get(key.curve.name)
        if name is None:
            raise ValueError(f"EC curve {key.curve.name} is not supported")
        return name
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return KeyType.ED25519
    raise ValueError(f"unsupported key type {type(key).__name__}")


def signature_hash(key: "CertificateIssuerPublicKeyTypes | CertificateIssuerPrivateKeyTypes") -> Any:
    """The hash to sign certificates and CRLs with: SHA-256 for RSA of any size (the lint gate signs
    with a throwaway RSA-1024 key), SHA-384 for P-384, none for Ed25519."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return hashes.SHA256()
    kt = key_type_of(key)
    if kt is KeyType.ED25519:
        return None
    if kt is KeyType.ECDSA_P384:
        return hashes.SHA384()
    return hashes.SHA256()
