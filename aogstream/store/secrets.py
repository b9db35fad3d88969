"""Provider credentials encrypted at rest with the operator's secret.

When `AOGSTREAM_SECRET_KEY` is set, every provider `auth_key` is written to the store as
`aogenc1:<salt>:<nonce+ciphertext>` (URL-safe base64): AES-256-GCM under a key derived
from the secret with scrypt (n=2**14, r=8, p=1) and a random 16-byte salt stored with the
value, the provider name bound in as associated data (a sealed key copied onto another
provider does not open). Values without the prefix are plain rows from before the secret
was set: they still read, and the store seals them when it opens (see `store.sql`).

Why the secret comes from the environment and not a file in the data dir: a copy of the
data dir (a backup, another local user who can read it) must not be enough to read the
keys. Without the secret, or with another one, sealed values cannot be opened, and the
gateway refuses to start rather than serve providers with missing credentials.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

ENV = "AOGSTREAM_SECRET_KEY"
PREFIX = "aogenc1:"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class SecretError(Exception):
    """A sealed value cannot be opened (no secret, or not the secret it was sealed with)."""


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SecretBox:
    """Seals and opens values with keys derived from one secret.

    One salt is used for everything this process writes (the first one found in the
    store, else a new one), so a store holds few salts and each key is derived once.
    """

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError(f"{ENV} is empty")
        self._secret = secret.encode("utf-8")
        self._keys: dict[bytes, AESGCM] = {}
        self.salt = os.urandom(16)

    @classmethod
    def from_env(cls) -> SecretBox | None:
        secret = os.environ.get(ENV, "")
        return cls(secret) if secret else None

    def _aead(self, salt: bytes) -> AESGCM:
        aead = self._keys.get(salt)
        if aead is None:
            key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(
                self._secret)
            aead = self._keys[salt] = AESGCM(key)
        return aead

    def adopt_salt(self, sealed: str) -> None:
        """Write with the salt of a value already in the store."""
        salt, _ = self._split(sealed)
        self.salt = salt

    @staticmethod
    def _split(sealed: str) -> tuple[bytes, bytes]:
        try:
            salt_text, body_text = sealed[len(PREFIX):].split(":", 1)
            salt, body = _unb64(salt_text), _unb64(body_text)
        except ValueError:
            raise SecretError("a sealed value is malformed") from None
        if len(salt) != 16 or len(body) < 12 + 16:
            raise SecretError("a sealed value is malformed")
        return salt, body

    def seal(self, plain: str, context: str) -> str:
        if not plain or is_sealed(plain):
            return plain
        nonce = os.urandom(12)
        body = self._aead(self.salt).encrypt(nonce, plain.encode("utf-8"),
                                             context.encode("utf-8"))
        return f"{PREFIX}{_b64(self.salt)}:{_b64(nonce + body)}"

    def open(self, value: str, context: str) -> str:
        if not is_sealed(value):
            return value
        salt, body = self._split(value)
        try:
            plain = self._aead(salt).decrypt(body[:12], body[12:], context.encode("utf-8"))
        except InvalidTag:
            raise SecretError(f"{ENV} is not the secret this value was encrypted "
                              f"with") from None
        return plain.decode("utf-8")


def open_value(box: SecretBox | None, value: str, context: str) -> str:
    """`value` in plain text; SecretError when it is sealed and cannot be opened."""
    if not is_sealed(value):
        return value
    if box is None:
        raise SecretError(f"provider credentials are encrypted; set {ENV} to the secret "
                          f"they were encrypted with")
    return box.open(value, context)


__all__ = ["ENV", "PREFIX", "SecretBox", "SecretError", "is_sealed", "open_value"]
