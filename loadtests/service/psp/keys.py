"""Keys of the PSP faces, kept in the data directory (``<data>/psp/<face>/``), never printed in full.

A face asks for its RSA key pair by name: it is created on first use (2048 bits, PKCS#8 PEM, file mode
0600 for the private key) and reused by every later run on the same data directory, so a staging
checkout configured once keeps working across restarts. ``shown`` abbreviates a key or secret for
logs and terminals.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey


def face_dir(data_dir: Path, face: str) -> Path:
    path = Path(data_dir) / "psp" / face
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def rsa_key_pair(directory: Path, name: str) -> tuple[RSAPrivateKey, Path, Path]:
    """``(private key, private PEM path, public PEM path)`` of key pair ``name`` in ``directory``."""
    private_path, public_path = directory / f"{name}_private_key.pem", directory / f"{name}_public_key.pem"
    if private_path.exists():
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(key, RSAPrivateKey):
            raise ValueError(f"{private_path}: expected an RSA private key")
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    if not public_path.exists():
        public_path.write_bytes(public_pem(key.public_key()))
    return key, private_path, public_path


def public_pem(key: RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem_or_path: str | bytes | Path) -> RSAPublicKey:
    """An RSA public key from PEM text, a PEM file, or a bare base64 body (as PSP consoles show them)."""
    if isinstance(pem_or_path, Path) or (isinstance(pem_or_path, str) and "BEGIN" not in pem_or_path
                                           and Path(pem_or_path).exists()):
        data = Path(pem_or_path).read_bytes()
    else:
        data = pem_or_path.encode() if isinstance(pem_or_path, str) else pem_or_path
    if b"BEGIN" not in data:
        body = b"".join(data.split())
        data = b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + \
            b"\n-----END PUBLIC KEY-----\n"
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("expected an RSA public key")
    return key


def secret_file(directory: Path, name: str, nbytes: int = 32, alphabet_hex: bool = False) -> str:
    """A secret kept in ``directory/name`` (created on first use, mode 0600)."""
    path = directory / name
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(nbytes // 2) if alphabet_hex else secrets.token_urlsafe(nbytes)[:nbytes]
    _write_private(path, value.encode())
    return value


def shown(secret: str, keep: int = 4) -> str:
    """``abcd…wxyz``: enough to tell two keys apart, never the key."""
    if len(secret) <= 2 * keep:
        return "…"
    return f"{secret[:keep]}…{secret[-keep:]}"
