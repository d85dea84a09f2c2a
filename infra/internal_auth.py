"""Authenticated internal messages: an HMAC-SHA256 tag per message, and the key an app's workers share.

Owns the tag (`InternalKeys.headers` to sign, `InternalKeys.check` to verify) and where the key comes from
(`load_internal_keys`). The tag covers the topic name, the partition, the key and the value of a message,
each length-prefixed, so a tagged message cannot be changed, nor replayed onto another topic or partition;
it travels in the Kafka header ``trail-hmac`` (the value stays the message's JSON, as before). Verification
uses `hmac.compare_digest` and comes before anything is parsed.

Key sources, first found wins: ``--internal-key-file PATH`` (or ``$TRAIL_INTERNAL_KEY_FILE``), the
environment variable ``$TRAIL_INTERNAL_KEY`` (hex), else a per-app key file ``DATA_DIR/keys/<app id>.key``
created once (mode 0600, written in full under a private name, then linked into place without replacing
anything, so workers starting together on one machine end up with the same key). A key file or variable
holds one key or several (hex, one per line or separated by commas; ``#`` comments): the first signs, all
verify, which is how a key is rotated without rejecting messages still in flight.

Key bytes are never logged, printed or put in a repr. Reads and creates key files; no network I/O here.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import TrailError

Headers = Iterable[tuple[str, bytes]] | None   # a Kafka message's headers, as aiokafka gives them

log = logging.getLogger("trail.internal_auth")

HEADER = "trail-hmac"
KEY_FILE_ENV = "TRAIL_INTERNAL_KEY_FILE"
KEY_ENV = "TRAIL_INTERNAL_KEY"
KEY_BYTES = 32                  # generated keys: 256 bits
MIN_KEY_BYTES = 16              # shorter given keys are refused
_DOMAIN = b"trail-internal-v1\0"
_APP_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")   # Kafka topic name characters: the app id prefixes topics


class InternalKeyError(TrailError):
    """The internal-message key cannot be read or is not a usable key."""


_LENGTHS = struct.Struct(">qqqq")   # topic length, partition, key length, value length (-1: None)


@dataclass(frozen=True)
class InternalKeys:
    """The signing key and the keys also accepted (the previous ones during a rotation)."""

    signing: bytes
    accepted: tuple[bytes, ...] = field(default=())
    source: str = "given"       # where the keys came from, for the start-up log line (never the key)
    _keyed: tuple[hmac.HMAC, ...] = field(init=False, repr=False, compare=False)   # keyed states, signing first

    def __post_init__(self) -> None:
        for key in (self.signing, *self.accepted):
            if len(key) < MIN_KEY_BYTES:
                raise InternalKeyError(f"an internal key of {len(key)} bytes is too short (at least "
                                       f"{MIN_KEY_BYTES}); generate one with `openssl rand -hex 32`")
        # copying a keyed state saves ~1 us a message over keying afresh
        object.__setattr__(self, "_keyed", tuple(hmac.new(key, _DOMAIN, hashlib.sha256)
                                                 for key in (self.signing, *self.accepted)))

    def __repr__(self) -> str:
        return f"InternalKeys(signing=***, accepted={len(self.accepted)} more, source={self.source!r})"

    __str__ = __repr__

    def fingerprint(self) -> str:
        """8 hex digits identifying the signing key in logs (a hash of a hash; says nothing about the key)."""
        return hashlib.sha256(hashlib.sha256(b"fingerprint\0" + self.signing).digest()).hexdigest()[:8]

    def tag(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> bytes:
        """HMAC-SHA256 with the signing key over the lengths of the topic, key and value and the partition,
        then those bytes."""
        return _tag(self._keyed[0], topic, partition, key, value)

    def headers(self, topic: str, partition: int, key: bytes | None, value: bytes) -> list[tuple[str, bytes]]:
        """The Kafka headers that authenticate this message on this topic and partition."""
        return [(HEADER, self.tag(topic, partition, key, value))]

    def check(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
              headers: Headers) -> str | None:
        """None if the message carries exactly one tag made by one of the accepted keys; else why not."""
        tags = [tag for name, tag in (headers or ()) if name == HEADER]
        if len(tags) != 1:
            return (f"no {HEADER} header: not signed by a worker of this app" if not tags
                    else f"{len(tags)} {HEADER} headers, want one")
        for keyed in self._keyed:
            if hmac.compare_digest(tags[0], _tag(keyed, topic, partition, key, value)):
                return None
        return (f"{HEADER} tag does not match this message on {topic}[{partition}] under the app's key(s): "
                "forged, altered, replayed from another topic or partition, or signed with another key")


def _tag(keyed: hmac.HMAC, topic: str, partition: int, key: bytes | None, value: bytes | None) -> bytes:
    topic_bytes = topic.encode()
    mac = keyed.copy()
    mac.update(_LENGTHS.pack(len(topic_bytes), partition, -1 if key is None else len(key),
                             -1 if value is None else len(value)) + topic_bytes + (key or b""))
    if value:
        mac.update(value)
    return mac.digest()


def parse_keys(text: str, source: str) -> InternalKeys:
    """Keys from hex text: one per line or comma-separated, `#` comments; the first signs."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        for word in line.split("#", 1)[0].replace(",", " ").split():
            try:
                keys.append(bytes.fromhex(word))
            except ValueError:
                raise InternalKeyError(f"{source} line {number}: a key is not hex (value not shown); write "
                                       "hex keys, e.g. from `openssl rand -hex 32`") from None
    if not keys:
        raise InternalKeyError(f"{source} holds no key; write a hex key, e.g. from `openssl rand -hex 32`")
    return InternalKeys(keys[0], tuple(keys[1:]), source)


def default_key_path(data_dir: Path, app_id: str) -> Path:
    """DATA_DIR/keys/<app id>.key: shared by every worker started with this data dir (one per worker id)."""
    if not _APP_ID.match(app_id):
        raise InternalKeyError(f"app id {app_id!r} is not a valid name for a key file (letters, digits, . _ -)")
    return Path(data_dir) / "keys" / f"{app_id}.key"


def load_internal_keys(app_id: str, data_dir: Path, key_file: Path | None = None,
                       environ: Mapping[str, str] | None = None) -> InternalKeys:
    """The app's keys: `key_file`, else $TRAIL_INTERNAL_KEY_FILE, else $TRAIL_INTERNAL_KEY, else the default
    key file under `data_dir` (created on first use)."""
    environ = os.environ if environ is None else environ
    key_file = key_file or (Path(environ[KEY_FILE_ENV]) if environ.get(KEY_FILE_ENV) else None)
    if key_file is not None:
        return parse_keys(_read_key_file(Path(key_file), follow_symlinks=True), f"key file {key_file}")
    if environ.get(KEY_ENV):
        return parse_keys(environ[KEY_ENV], f"${KEY_ENV}")
    path = default_key_path(data_dir, app_id)
    created = create_key_file_once(path)
    keys = parse_keys(_read_key_file(path, follow_symlinks=False), f"key file {path}")
    if created:
        log.warning("internal-message key created at %s (fingerprint %s): workers of app %s on other machines or "
                    "with another --data-dir must use the same key (--internal-key-file or $%s)",
                    path, keys.fingerprint(), app_id, KEY_FILE_ENV)
    return keys


def create_key_file_once(path: Path) -> bool:
    """Create `path` with a fresh random key unless it exists; True if this call created it.

    The key is written and fsynced under a private temporary name (mode 0600), then hard-linked to `path`,
    which fails if `path` exists: of several processes racing, one key wins and every one reads it whole.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        return False
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(secrets.token_hex(KEY_BYTES).encode() + b"\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _read_key_file(path: Path, follow_symlinks: bool) -> str:
    """A key file's text; a file others may read draws a warning (mounted secrets are often 0644)."""
    flags = os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InternalKeyError(f"internal key file {path}: cannot open it ({exc.strerror}); give a readable "
                               "file of hex keys") from None
    with os.fdopen(fd, "rb") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        data = file.read(64 * 1024)
    if mode & 0o077:
        log.warning("internal key file %s is readable by other users (mode %o): whoever reads it can forge "
                    "internal messages; chmod 600 %s", path, mode, path)
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise InternalKeyError(f"internal key file {path} is not text; write hex keys, one per line") from None

