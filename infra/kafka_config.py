"""Where Kafka is and how to talk to it: bootstrap servers, pass-through client settings, and their secrets.

Every Kafka-facing command takes ``--bootstrap`` (default ``$TRAIL_BOOTSTRAP``, else 127.0.0.1:9092) and
client settings with librdkafka/Java-style names (``security.protocol``, ``sasl.mechanism``,
``sasl.username``, ``sasl.password``, ``ssl.ca.location``, ...) from three places, later ones winning:

1. environment variables ``TRAIL_KAFKA_<NAME>`` (``TRAIL_KAFKA_SASL_PASSWORD`` -> ``sasl.password``);
2. a file, ``--kafka-config-file PATH`` (or ``$TRAIL_KAFKA_CONFIG_FILE``): ``KEY=VALUE`` lines, ``#``
   comments and blank lines allowed; a file other users can read draws a warning;
3. ``--kafka-config KEY=VALUE`` (repeatable) for settings that are not secret: the command line is visible
   to every user of the machine (``ps``), so a secret given there draws a warning naming the safer ways.

Credentials are never needed on the command line, and never printed: ``KafkaSettings``' repr and
``redacted()`` mask every secret-looking value. The same settings are translated for each client library
used here (confluent-kafka takes them as they are; faust/aiokafka and kafka-python get their own
spellings). Reads the config file; no network I/O here.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("trail.kafka_config")

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "TRAIL_BOOTSTRAP"
# TRAIL_KAFKA_SECURITY_PROTOCOL=SASL_SSL  ->  security.protocol=SASL_SSL
CONFIG_ENV_PREFIX = "TRAIL_KAFKA_"
CONFIG_FILE_ENV = "TRAIL_KAFKA_CONFIG_FILE"      # not a client setting: excluded from the TRAIL_KAFKA_* mapping
MASK = "***"
# a setting whose name contains one of these holds a credential (sasl.password, ssl.key.password,
# ssl.keystore.password, sasl.oauthbearer.client.secret, sasl.jaas.config, ...)
SECRET_MARKERS = ("password", "secret", "jaas", "token", "credential")
SECRET_KEYS = frozenset({"ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "ssl.keystore.key"})


def default_bootstrap() -> str:
    return os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


def is_secret_key(key: str) -> bool:
    """Whether the client setting `key` holds a credential (its value must never be shown)."""
    name = key.lower()
    return name in SECRET_KEYS or any(marker in name for marker in SECRET_MARKERS)


def redact(settings: dict[str, str]) -> dict[str, str]:
    """`settings` with every secret value replaced by '***' (for logs, reprs and error messages)."""
    return {key: MASK if is_secret_key(key) else value for key, value in settings.items()}


def env_var_for(key: str) -> str:
    """The environment variable that sets client setting `key` (sasl.password -> TRAIL_KAFKA_SASL_PASSWORD)."""
    return CONFIG_ENV_PREFIX + key.upper().replace(".", "_")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = field(default_factory=default_bootstrap)
    extra: dict[str, str] = field(default_factory=dict)   # librdkafka-style names

    def __repr__(self) -> str:
        return f"KafkaSettings(bootstrap={self.bootstrap!r}, extra={self.redacted()!r})"

    def redacted(self) -> dict[str, str]:
        """The pass-through settings with secret values masked."""
        return redact(self.extra)

    def confluent(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap, **self.extra}

    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{host}" for host in self.bootstrap.split(","))

    def faust_credentials(self):  # -> faust.types.auth.Credentials | None
        """SASL/TLS credentials for faust from the pass-through settings (None for PLAINTEXT)."""
        protocol = self.extra.get("security.protocol", "PLAINTEXT").upper()
        if protocol == "PLAINTEXT":
            return None
        import ssl

        import faust

        context = None
        if "SSL" in protocol:
            context = ssl.create_default_context(cafile=self.extra.get("ssl.ca.location"))
            if self.extra.get("ssl.certificate.location"):
                context.load_cert_chain(self.extra["ssl.certificate.location"], self.extra.get("ssl.key.location"),
                                        password=self.extra.get("ssl.key.password"))
        if "SASL" in protocol:
            return faust.SASLCredentials(
                username=self.extra.get("sasl.username"),
                password=self.extra.get("sasl.password"),
                mechanism=self.extra.get("sasl.mechanism", "PLAIN"),
                ssl_context=context,
            )
        return faust.SSLCredentials(context)


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Client settings from TRAIL_KAFKA_* environment variables (TRAIL_KAFKA_SASL_PASSWORD -> sasl.password)."""
    environ = os.environ if environ is None else environ
    return {key[len(CONFIG_ENV_PREFIX):].lower().replace("_", "."): value for key, value in environ.items()
            if key.startswith(CONFIG_ENV_PREFIX) and key != CONFIG_FILE_ENV}


def warn_if_others_can_read(path: Path) -> None:
    """A warning (not a refusal: mounted secrets are often 0644) when group or others may read `path`."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("Kafka config file %s is readable by other users (mode %o); it may hold credentials: "
                    "chmod 600 %s", path, mode, path)


def parse_config_file(path: Path) -> dict[str, str]:
    """Client settings from a KEY=VALUE file (# comments and blank lines allowed); values never echoed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"--kafka-config-file {path}: cannot read it ({exc.strerror}); give a readable "
                         "KEY=VALUE file") from None
    warn_if_others_can_read(path)
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path} line {number}: expected KEY=VALUE (or a # comment); fix that line")
        settings[key.strip()] = value.strip()
    return settings


def warn_about_secrets_on_the_command_line(keys: list[str]) -> None:
    """One warning per secret-looking key given with --kafka-config (the value is not repeated)."""
    for key in keys:
        if is_secret_key(key):
            log.warning("--kafka-config %s=... puts a credential on the command line, where every user of this "
                        "machine can read it (ps); set %s or put it in a --kafka-config-file (chmod 600) instead",
                        key, env_var_for(key))


def parse_config_pairs(pairs: list[str]) -> dict[str, str]:
    """Client settings from --kafka-config KEY=VALUE pairs; a secret-looking key draws a warning."""
    extra: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--kafka-config expects KEY=VALUE, got {pair!r} with no '='")
        if not key.strip():
            raise ValueError("--kafka-config expects KEY=VALUE, got an empty KEY (the value is not shown)")
        extra[key.strip()] = value
    warn_about_secrets_on_the_command_line(list(extra))
    return extra
