"""Verify an OpenSSF model-signing signature over one model file.

The signature is a sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``) made by the
``model-signing`` package: a DSSE envelope over an in-toto statement listing the model's digests.
Two offline methods are supported:

- ``key``: an elliptic-curve key pair; the signer's identity is ``key:sha256:<hex>`` of the public
  key's SubjectPublicKeyInfo DER, so the identity names the key itself.
- ``certificate``: a leaf certificate (and intermediates) carried in the bundle, chained by
  ``model-signing`` to a pinned root; the identity is one of the leaf's subject alternative names
  or its RFC 4514 subject.

Keyless Sigstore signatures (Fulcio certificates, Rekor entries) need the network and are not
accepted here. The library works on paths, so the model and the signature are written into a
private (0700) temporary directory that is removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from qward.encoding import b64decode, b64encode, parse_canonical_json
from qward.errors import FormatError, InputError, SignatureError, VerificationError

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "SIGNATURE_HEADER",
    "Method",
    "ModelSignature",
    "SignatureRecord",
    "TrustedSigner",
    "certificate_identities",
    "key_identity",
    "signed_model_header",
    "verify_model_signature",
]

#: The member of a sealed model's (authenticated) header that carries its signature.
SIGNATURE_HEADER = "model_signature"
MAX_SIGNATURE_BYTES = 32 * 1024
#: How a model was signed: an EC key pair, or a certificate chained to a pinned root.
Method = Literal["key", "certificate"]
_METHODS = ("key", "certificate")


def key_identity(public_key_pem: bytes) -> str:
    """``key:sha256:<hex>`` of an EC public key's SubjectPublicKeyInfo DER."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as exc:
        raise FormatError(f"signer key is not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FormatError("signer key must be an elliptic-curve public key")
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "key:sha256:" + hashlib.sha256(der).hexdigest()


def certificate_identities(certificate: x509.Certificate) -> frozenset[str]:
    """Every identity a leaf certificate can stand for: its SAN values and its subject."""
    names = {certificate.subject.rfc4514_string()}
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(names)
    for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
        names.update(str(v) for v in san.get_values_for_type(kind))
    return frozenset(names)


@dataclass(frozen=True, kw_only=True)
class TrustedSigner:
    """A signer someone decided to trust: an EC public key or a certificate root, pinned."""

    method: Method
    identity: str
    #: The EC public key (``key``) or the root certificate(s) (``certificate``), PEM.
    pem: bytes

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise InputError(f"signer method must be one of {_METHODS}, not {self.method!r}")
        if not self.identity:
            raise InputError("a signer needs an identity")
        if self.method == "key" and key_identity(self.pem) != self.identity:
            raise InputError(
                f"identity {self.identity!r} is not the identity of the given key "
                f"({key_identity(self.pem)})"
            )
        if self.method == "certificate":
            try:
                x509.load_pem_x509_certificates(self.pem)
            except ValueError as exc:
                raise FormatError(f"signer root is not a PEM certificate: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class SignatureRecord:
    """What a verified signature vouches for, as registration entries and receipts record it."""

    method: Method
    identity: str
    signature_sha256: str

    def to_json(self) -> dict[str, str]:
        """Wire form."""
        return {
            "method": self.method,
            "identity": self.identity,
            "signature_sha256": self.signature_sha256,
        }


@dataclass(frozen=True, kw_only=True)
class ModelSignature:
    """A signature travelling with a model: the bundle, the signed file's name, the claimed
    identity. It rides in the sealed model's header, which AES-GCM authenticates."""

    bundle: bytes
    file_name: str
    identity: str

    def __post_init__(self) -> None:
        if not 0 < len(self.bundle) <= MAX_SIGNATURE_BYTES:
            raise InputError(f"a model signature is 1 to {MAX_SIGNATURE_BYTES} bytes")
        if not self.file_name or "/" in self.file_name or self.file_name in (".", ".."):
            raise InputError(f"signed file name {self.file_name!r} must be a plain file name")
        if not self.identity:
            raise InputError("a model signature needs the signer identity")

    def to_json(self) -> dict[str, str]:
        """Header form."""
        return {
            "bundle": b64encode(self.bundle),
            "file_name": self.file_name,
            "identity": self.identity,
        }

    @classmethod
    def from_json(cls, doc: object) -> ModelSignature:
        """Parse the header form."""
        fields = {"bundle", "file_name", "identity"}
        if not isinstance(doc, dict) or set(doc) != fields:
            raise FormatError(f"model signature: needs exactly {sorted(fields)}")
        if not isinstance(doc["file_name"], str) or not isinstance(doc["identity"], str):
            raise FormatError("model signature: file_name and identity must be strings")
        bundle = b64decode(doc["bundle"], what="model signature bundle")
        return cls(bundle=bundle, file_name=doc["file_name"], identity=doc["identity"])

    @classmethod
    def from_sealed_header(cls, header: bytes) -> ModelSignature | None:
        """The signature a sealed model's header carries, or ``None`` if it carries none."""
        doc = parse_canonical_json(header, what="sealed artifact header")
        if SIGNATURE_HEADER not in doc:
            return None
        return cls.from_json(doc[SIGNATURE_HEADER])


def _bundle(signature: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(signature)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"model signature is not a sigstore bundle (JSON): {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("verificationMaterial"), dict):
        raise FormatError("model signature is not a sigstore bundle: no verificationMaterial")
    return doc


def _leaf(bundle: dict[str, Any]) -> x509.Certificate:
    chain = bundle["verificationMaterial"].get("x509CertificateChain")
    certificates = chain.get("certificates") if isinstance(chain, dict) else None
    if not isinstance(certificates, list) or not certificates:
        raise FormatError("model signature carries no certificate chain (signed with a key?)")
    raw = b64decode(certificates[0].get("rawBytes"), what="model signature leaf certificate")
    try:
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise FormatError(f"model signature leaf certificate does not parse: {exc}") from None


def _check_identity(bundle: dict[str, Any], signer: TrustedSigner, expected: str) -> None:
    if signer.method == "key":
        if "publicKey" not in bundle["verificationMaterial"]:
            raise SignatureError("model signature was not made with a key (certificate chain?)")
        # Bundles of model-signing before 1.0 carry no key hint; the library then prints a
        # warning on stdout and goes on. They are refused here: re-sign with a current signer.
        if not bundle["verificationMaterial"]["publicKey"].get("hint"):
            raise SignatureError("model signature has no public key hint (pre-1.0 format)")
        if expected != signer.identity:
            raise SignatureError(f"signer is {signer.identity!r}, not the expected {expected!r}")
        return
    identities = certificate_identities(_leaf(bundle))
    if expected != signer.identity or expected not in identities:
        raise SignatureError(
            f"signing certificate is for {sorted(identities)}, not the expected {expected!r}"
        )


@contextmanager
def _private_dir() -> Iterator[Path]:
    # mkdtemp creates the directory 0700; it holds plaintext model bytes, and is removed.
    with tempfile.TemporaryDirectory(prefix="qward-sig-") as name:
        os.chmod(name, 0o700)
        yield Path(name)


def _library_verify(model: Path, signature: Path, signer: TrustedSigner, pins: Path) -> None:
    try:
        # Imported here: it is heavy and only signed models need it.
        from model_signing import verifying
    except ImportError as exc:
        # Not a verification failure: say which package is missing (pyOpenSSL comes with it).
        raise InputError(
            f"verifying model signatures needs the model-signing package ({exc.name} is missing)"
        ) from None

    config = verifying.Config()  # type: ignore[no-untyped-call]  # the library is untyped here
    if signer.method == "key":
        config.use_elliptic_key_verifier(public_key=pins)
    else:
        config.use_certificate_verifier(certificate_chain=[pins])
    with warnings.catch_warnings():
        # model-signing 1.1 calls the deprecated ``Logger.warn`` when a signing certificate has
        # no KeyUsage (ExtendedKeyUsage codeSigning suffices); that one warning is not ours.
        warnings.filterwarnings(
            "ignore", message="The 'warn' method is deprecated", category=DeprecationWarning
        )
        config.verify(model, signature)


def verify_model_signature(
    model: bytes, signature: ModelSignature, *, signer: TrustedSigner
) -> SignatureRecord:
    """Verify ``signature`` over ``model`` (one file named ``signature.file_name``) for
    ``signer``; the record to log, or a ``VerificationError`` naming what does not match."""
    bundle = _bundle(signature.bundle)
    _check_identity(bundle, signer, signature.identity)
    with _private_dir() as work:
        model_dir = work / "model"
        model_dir.mkdir(mode=0o700)
        model_path = model_dir / signature.file_name
        model_path.write_bytes(model)
        (work / "model.sig").write_bytes(signature.bundle)
        (work / "pins.pem").write_bytes(signer.pem)
        try:
            _library_verify(model_path, work / "model.sig", signer, work / "pins.pem")
        except (VerificationError, InputError):
            raise
        except Exception as exc:
            # model-signing raises bare ValueErrors, cryptography's InvalidSignature and
            # pyOpenSSL's X509StoreContextError; each is mapped to a VerificationError.
            raise _mapped(exc, signature.file_name) from None
    return SignatureRecord(
        method=signer.method,
        identity=signature.identity,
        signature_sha256=hashlib.sha256(signature.bundle).hexdigest(),
    )


def _mapped(exc: Exception, file_name: str) -> VerificationError:
    text = str(exc)
    if text.startswith("Signature mismatch"):
        return VerificationError(
            f"model file {file_name!r} does not match its signature (its digest differs)"
        )
    if isinstance(exc, InvalidSignature):
        return SignatureError(f"the signature over {file_name!r} does not verify under the signer")
    name = type(exc).__name__
    if name == "X509StoreContextError":
        return SignatureError(
            f"the signing certificate of {file_name!r} does not chain to the pinned root: {text}"
        )
    return SignatureError(f"the signature over {file_name!r} does not verify: {name}: {text}")


def signed_model_header(
    model: bytes, signature: ModelSignature, *, signer: TrustedSigner
) -> dict[str, object]:
    """Verify ``signature`` for ``signer`` before sealing (a ``VerificationError`` otherwise);
    the header member that carries it inside the sealed model for the core to check again."""
    verify_model_signature(model, signature, signer=signer)
    return {SIGNATURE_HEADER: signature.to_json()}
