"""Encryption at rest for app keys: Fernet, with rotation through MultiFernet."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models
from django.db.models.query_utils import DeferredAttribute


def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(k.encode()) for k in settings.FIELD_ENCRYPTION_KEYS])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        # Never include the token: it is the secret, even if encrypted under a lost key.
        raise ValueError("the stored secret cannot be decrypted with FIELD_ENCRYPTION_KEY") from exc


def rotate(token: str) -> str:
    """Re-encrypt under the first key; tokens already under it come back unchanged in meaning."""
    return _fernet().rotate(token.encode()).decode()


class _Ciphertext:
    """A value read from the database, decrypted only when the attribute is read."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


class _DecryptOnRead(DeferredAttribute):
    # A data descriptor (it has __set__), so reads come here even once the value is in the
    # instance's __dict__.
    def __set__(self, instance, value) -> None:
        instance.__dict__[self.field.attname] = value

    def __get__(self, instance, cls=None):
        if instance is None:
            return self
        value = super().__get__(instance, cls)
        if isinstance(value, _Ciphertext):
            value = decrypt(value.token)
            instance.__dict__[self.field.attname] = value
        return value


class EncryptedTextField(models.TextField):
    """Stores Fernet ciphertext; Python code sees plaintext.

    Decryption waits until the attribute is read, so listing conversations with their apps
    costs no cryptography. The plaintext never reaches forms, templates or repr: models expose
    a masked form instead.
    """

    descriptor_class = _DecryptOnRead

    def from_db_value(self, value, expression, connection):  # noqa: ARG002
        if value is None or value == "":
            return value
        return _Ciphertext(value)

    def get_prep_value(self, value):
        if isinstance(value, _Ciphertext):
            return value.token  # read and saved again unchanged: no need to re-encrypt
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)

    def value_to_string(self, obj) -> str:
        # Exports (dumpdata, serializers) carry the ciphertext, never the plaintext...
        value = self.value_from_object(obj)
        return encrypt(value) if value else value

    def to_python(self, value):
        # ...and loading such an export decrypts it again (get_prep_value re-encrypts on save).
        # Anything else, such as a key typed into a form, is kept as it is.
        if isinstance(value, str) and value.startswith("gAAAAA"):
            try:
                return decrypt(value)
            except ValueError:
                return value
        return value


def mask(secret: str) -> str:
    """fastgpt-…wxyz: enough to tell two keys apart, not enough to use one."""
    if not secret:
        return ""
    if len(secret) <= 16:
        return "…" + secret[-2:]
    return f"{secret[:8]}…{secret[-4:]}"
