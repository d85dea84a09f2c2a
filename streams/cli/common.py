"""What the `trail` subcommands share: the Kafka, window and topic argument groups, and subcommand registration.

Every default comes from the config it fills (`infra.kafka_config`, `models.windows.WindowSpec`,
`streams.config.Topics` / `WorkerConfig`), so a default is written once. A subcommand module that fails to
import is registered anyway, as a command that says why it cannot run (it never vanishes from `--help`).
No Kafka I/O here.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

from infra.errors import CommandError
from infra.kafka_config import (
    BOOTSTRAP_ENV,
    CONFIG_ENV_PREFIX,
    CONFIG_FILE_ENV,
    DEFAULT_BOOTSTRAP,
    KafkaSettings,
    default_bootstrap,
    env_var_for,
    parse_config_file,
    parse_config_pairs,
    settings_from_env,
)
from models.windows import WindowSpec
from streams.config import Topics, WorkerConfig

# --- Kafka ---------------------------------------------------------------------------------------------------


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kafka")
    group.add_argument("--bootstrap", default=default_bootstrap(), metavar="HOST:PORT",
                       help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP})")
    group.add_argument("--kafka-config-file", type=Path, default=os.environ.get(CONFIG_FILE_ENV) or None,
                       metavar="PATH", help="client settings as KEY=VALUE lines (# comments allowed), the place "
                       f"for credentials; chmod 600 it (default: ${CONFIG_FILE_ENV})")
    group.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                       help="extra client setting, e.g. security.protocol=SASL_SSL (repeatable; overrides "
                       f"{CONFIG_ENV_PREFIX}* environment variables and the config file). Not for secrets: the "
                       f"command line is visible to all users; use e.g. {env_var_for('sasl.password')} or the file")


def settings_from_args(args: argparse.Namespace) -> KafkaSettings:
    """Settings from the environment, then --kafka-config-file, then --kafka-config (later ones win)."""
    extra = settings_from_env()
    if getattr(args, "kafka_config_file", None):
        extra.update(parse_config_file(args.kafka_config_file))
    extra.update(parse_config_pairs(args.kafka_config))
    return KafkaSettings(bootstrap=args.bootstrap, extra=extra)


# --- windows -------------------------------------------------------------------------------------------------


def add_window_args(parser: argparse.ArgumentParser, spec: WindowSpec | None,
                    title: str = "windows (event time)", lateness: bool = True) -> None:
    """--slot-s, --bucket-s, --n-buckets (and --allowed-lateness-s) defaulting to `spec`'s values; spec=None:
    they default to None, and `window_spec_from_args` fills them from the caller's own geometry."""
    def default(name: str):
        return None if spec is None else getattr(spec, name)

    shown = "" if spec is None else " (default: %(default)s)"
    group = parser.add_argument_group(title)
    group.add_argument("--slot-s", type=int, default=default("slot_s"), help="counting grain in seconds" + shown)
    group.add_argument("--bucket-s", type=int, default=default("bucket_s"),
                       help="forecasting period in seconds, a multiple of --slot-s" + shown)
    group.add_argument("--n-buckets", type=int, default=default("n_buckets"),
                       help="buckets of history per item" + shown)
    if lateness:
        group.add_argument("--allowed-lateness-s", type=int, default=(spec or WindowSpec()).allowed_lateness_s,
                           help="watermark = max event time - this; later events are counted and reported as late")


def window_spec_from_args(args: argparse.Namespace, fallback: WindowSpec | None = None) -> WindowSpec:
    """The window of the flags; flags left unset (None) take `fallback`'s values."""
    base = fallback or WindowSpec()
    return WindowSpec(slot_s=args.slot_s or base.slot_s, bucket_s=args.bucket_s or base.bucket_s,
                      n_buckets=args.n_buckets or base.n_buckets,
                      allowed_lateness_s=getattr(args, "allowed_lateness_s", base.allowed_lateness_s))


# --- topics --------------------------------------------------------------------------------------------------


def add_topic_args(parser: argparse.ArgumentParser) -> None:
    """--clicks-topic, --items-topic, --dlq-topic, --trending-topic and --partitions (defaults: `Topics`)."""
    defaults = Topics()
    group = parser.add_argument_group("topics")
    for name in ("clicks", "items", "dlq", "trending"):
        group.add_argument(f"--{name}-topic", default=getattr(defaults, name), metavar="NAME")
    group.add_argument("--partitions", type=int, default=WorkerConfig.partitions,
                       help="partitions of clicks/items and the internal topics (created if missing)")


def topics_from_args(args: argparse.Namespace) -> Topics:
    return Topics(clicks=args.clicks_topic, items=args.items_topic, dlq=args.dlq_topic,
                  trending=args.trending_topic)


def topic_flags(topics: Topics) -> list[str]:
    """The command-line flags that name `topics` (for starting workers as subprocesses)."""
    return ["--clicks-topic", topics.clicks, "--items-topic", topics.items, "--dlq-topic", topics.dlq,
            "--trending-topic", topics.trending]


# --- registration --------------------------------------------------------------------------------------------


def register(subparsers, modules: dict[str, str], hook: str = "add_parser") -> None:
    """Call `module.<hook>(subparsers)` for every (name, module); a module that fails to import becomes a
    command named `name` whose help and run say why (exit 2), so it stays visible in --help."""
    for name, module_name in modules.items():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:   # any import failure: a missing dependency, a syntax error, a broken import
            add_unavailable(subparsers, name, module_name, exc)
            continue
        getattr(module, hook)(subparsers)


def add_unavailable(subparsers, name: str, module_name: str, exc: BaseException) -> None:
    reason = f"{module_name} failed to import ({type(exc).__name__}: {exc})"
    parser = subparsers.add_parser(name, help=f"UNAVAILABLE: {reason}", description=f"UNAVAILABLE: {reason}",
                                   add_help=False, prefix_chars="\x00")   # every word is the rest
    parser.add_argument("rest", nargs="*")

    def run(args: argparse.Namespace) -> int:
        raise CommandError(f"{reason}; reinstall with `make install` or run with TRAIL_DEBUG=1 for the traceback")

    parser.set_defaults(func=run)
