"""Real model-signing signatures for the tests: an EC key pair and a CA made here, signed with
the ``model-signing`` library itself (no fakes)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from model_signing import signing

__all__ = ["CertificateSigner", "KeySigner", "make_ca_signer", "make_key_signer"]

_NOW = datetime.datetime.now(datetime.UTC)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class KeySigner:
    private: Path
    public: Path

    def sign(self, model: Path, signature: Path) -> None:
        signing.Config().use_elliptic_key_signer(private_key=self.private).sign(model, signature)


@dataclass(frozen=True)
class CertificateSigner:
    private: Path
    leaf: Path
    root: Path

    def sign(self, model: Path, signature: Path) -> None:
        signing.Config().use_certificate_signer(
            private_key=self.private, signing_certificate=self.leaf, certificate_chain=[self.root]
        ).sign(model, signature)


def make_key_signer(directory: Path) -> KeySigner:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "signer.key").write_bytes(_private_pem(key))
    (directory / "signer.pub").write_bytes(_public_pem(key))
    return KeySigner(directory / "signer.key", directory / "signer.pub")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_signer(directory: Path, *, email: str = "ml@example.com") -> CertificateSigner:
    """A root CA and a code-signing leaf for ``email`` issued by it."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key, leaf_key = (
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(_name("qward test root"))
        .issuer_name(_name("qward test root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(root_key, hashes.SHA384())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("model signer"))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(hours=1))
        .not_valid_after(_NOW + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    (directory / "leaf.key").write_bytes(_private_pem(leaf_key))
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return CertificateSigner(directory / "leaf.key", directory / "leaf.pem", directory / "root.pem")


def flipped_weight(model: bytes) -> bytes:
    """``model`` with one byte flipped: the lowest mantissa byte of its first weight, so the
    file is still a valid ONNX graph (only its signature can tell)."""
    import struct

    import onnx

    graph = onnx.load_from_string(model).graph
    weights = next(i for i in graph.initializer if len(i.float_data) > 0)
    packed = struct.pack(f"<{len(weights.float_data)}f", *weights.float_data)
    offset = model.index(packed)
    data = bytearray(model)
    data[offset] ^= 0x01
    return bytes(data)
