"""API keys: ``kf_<id>_<secret>`` with 12 hex digits of id and 256 random bits of secret; only SHA-256 hashes are
ever stored.

Why a fast hash and not bcrypt/argon2: those slow down guessing *low-entropy* passwords; a 256-bit random secret
cannot be guessed, so a salted slow hash would only add milliseconds to every request. The id (not secret) finds the
record, so a check is one hash and one ``hmac.compare_digest``; an unknown id is compared against a dummy hash so
that a miss and a wrong secret take the same time.

On disk (a mounted Secret, one entry per tenant): ``<tenant>.json`` = ``{"tenant": ..., "keys": [{"id", "sha256",
"created"}]}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kubeforge.config import ConfigError

PREFIX = "kf_"
ID_HEX = 12
_KEY = re.compile(r"^kf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DUMMY = hashlib.sha256(b"kubeforge: no such key").hexdigest()
KEY_FILE_SUFFIX = ".json"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant: str
    sha256: str
    created: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(tenant: str) -> tuple[str, KeyRecord]:
    """(the key, to print once; its record, to store)."""
    key_id = secrets.token_hex(ID_HEX // 2)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return key, KeyRecord(id=key_id, tenant=tenant, sha256=hash_key(key), created=created)


class MalformedCredentials(ValueError):
    """The Authorization header is present but not ``Bearer <key>``."""


def bearer_token(header: bytes | None) -> str | None:
    """The key in ``Authorization: Bearer <key>``; None when the header is absent."""
    if header is None:
        return None
    try:
        text = header.decode("ascii").strip()
    except UnicodeDecodeError:
        raise MalformedCredentials("the Authorization header is not ASCII") from None
    scheme, _, token = text.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
        raise MalformedCredentials("malformed Authorization header: expected 'Bearer <API key>'")
    return token.strip()


class KeyRing:
    """The keys of every tenant, by id."""

    def __init__(self, records: list[KeyRecord]):
        self.by_id: dict[str, KeyRecord] = {}
        for record in records:
            if record.id in self.by_id:
                raise ConfigError(f"key id {record.id} appears twice (tenants {self.by_id[record.id].tenant} and "
                                  f"{record.tenant})")
            self.by_id[record.id] = record

    def __len__(self) -> int:
        return len(self.by_id)

    def verify(self, key: str) -> KeyRecord | None:
        """The key's record, or None; the same work whether the id is unknown or the secret is wrong."""
        match = _KEY.match(key)
        record = self.by_id.get(match.group(1)) if match else None
        expected = record.sha256 if record is not None else _DUMMY
        matches = hmac.compare_digest(hash_key(key), expected)
        return record if matches and record is not None else None


def read_key_file(path: Path) -> list[KeyRecord]:
    """One tenant's records; a malformed file is a ConfigError naming it."""
    tenant = path.name.removesuffix(KEY_FILE_SUFFIX)
    try:
        data = json.loads(path.read_text())
        declared = data.get("tenant", tenant)
        if declared != tenant:
            raise ConfigError(f"{path}: names tenant {declared!r} but the file is {tenant}{KEY_FILE_SUFFIX}")
        records = []
        for entry in data["keys"]:
            key_id, digest = str(entry["id"]), str(entry["sha256"]).lower()
            if not re.fullmatch(r"[0-9a-f]{12}", key_id) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(f"{path}: key {key_id!r} needs a 12-hex-digit id and a SHA-256 hex digest")
            records.append(KeyRecord(id=key_id, tenant=tenant, sha256=digest, created=str(entry.get("created", ""))))
        return records
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: not a key file ({type(exc).__name__}: {exc}); expected "
                          '{"tenant": ..., "keys": [{"id", "sha256", "created"}]}') from None


def read_key_dir(directory: Path) -> list[KeyRecord]:
    """Every ``<tenant>.json`` of a directory (a mounted Secret: its ``..data`` entries are skipped)."""
    if not directory.is_dir():
        raise ConfigError(f"the keys directory {directory} does not exist (KUBEFORGE_LLM_KEYS_DIR)")
    records: list[KeyRecord] = []
    for path in sorted(directory.glob(f"*{KEY_FILE_SUFFIX}")):
        if not path.name.startswith("."):
            records.extend(read_key_file(path))
    return records


def key_file_text(tenant: str, records: list[KeyRecord]) -> str:
    """What a tenant's entry in the Secret holds: ids and hashes, never a key."""
    keys = [{k: v for k, v in asdict(r).items() if k != "tenant"} for r in records]
    return json.dumps({"tenant": tenant, "keys": keys}, indent=1, sort_keys=True) + "\n"


def records_from_text(tenant: str, text: str) -> list[KeyRecord]:
    data = json.loads(text)
    return [KeyRecord(id=e["id"], tenant=tenant, sha256=e["sha256"], created=e.get("created", ""))
            for e in data.get("keys", [])]
