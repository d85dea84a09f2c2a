"""Where Kafka is and how to talk to it: bootstrap servers and pass-through client settings.

Every Kafka-facing command takes ``--bootstrap`` (default ``$TRAIL_BOOTSTRAP``, else 127.0.0.1:9092) and
``--kafka-config KEY=VALUE`` (repeatable; librdkafka/Java-style names such as ``security.protocol``,
``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location``). The same settings are
translated for each client library used here (confluent-kafka takes them as they are; faust/aiokafka
and kafka-python get their own spellings). No I/O here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "TRAIL_BOOTSTRAP"
# TRAIL_KAFKA_SECURITY_PROTOCOL=SASL_SSL  ->  security.protocol=SASL_SSL
CONFIG_ENV_PREFIX = "TRAIL_KAFKA_"


def default_bootstrap() -> str:
    return os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = field(default_factory=default_bootstrap)
    extra: dict[str, str] = field(default_factory=dict)   # librdkafka-style names

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
                context.load_cert_chain(self.extra["ssl.certificate.location"],
                                        self.extra.get("ssl.key.location"))
        if "SASL" in protocol:
            return faust.SASLCredentials(
                username=self.extra.get("sasl.username"),
                password=self.extra.get("sasl.password"),
                mechanism=self.extra.get("sasl.mechanism", "PLAIN"),
                ssl_context=context,
            )
        return faust.SSLCredentials(context)


def parse_config_pairs(pairs: list[str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for key, value in os.environ.items():
        if key.startswith(CONFIG_ENV_PREFIX):
            extra[key[len(CONFIG_ENV_PREFIX):].lower().replace("_", ".")] = value
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--kafka-config expects KEY=VALUE, got {pair!r}")
        extra[key.strip()] = value
    return extra


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", default=default_bootstrap(), metavar="HOST:PORT",
                        help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                        help="extra client setting, e.g. security.protocol=SASL_SSL (repeatable; "
                        f"also read from {CONFIG_ENV_PREFIX}* environment variables)")


def settings_from_args(args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings(bootstrap=args.bootstrap, extra=parse_config_pairs(args.kafka_config))
