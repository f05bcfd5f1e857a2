"""Configuration: config.toml -> validated, typed Config. Touches the file system and env only.

The parts, each importing only those above it:
  sections  the typed result (Config, ImapConfig, ...); its field defaults are THE defaults
  checks    one value each: "imap.port: expected an integer, got \"abc\""
  spec      how the table is written: Key, Section, Many; a Key's default comes from its field
  rules     checks across keys (one password source, ports, clear text, the reply secret)
  schema    SCHEMA, the table of every accepted key
  reader    walks SCHEMA over the TOML: parse_config, load_config, secret_path
  describe  the summary `mailtick check-config` prints
Every problem is collected, one line per bad key, before anything is built.
"""

from mailtick.config.describe import describe
from mailtick.config.reader import load_config, parse_config, secret_path
from mailtick.config.schema import SCHEMA
from mailtick.config.sections import (
    PRIORITIES,
    AgentConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    DriftConfig,
    ImapConfig,
    LimitsConfig,
    QuarantineConfig,
    QueueConfig,
    RoutingRule,
    Security,
    SecurityConfig,
    SmtpConfig,
    TicketsConfig,
    TlsSettings,
    mask_url,
)
from mailtick.config.spec import FIELD, REQUIRED, Key, Many, Section, field_default

__all__ = [
    "FIELD",
    "PRIORITIES",
    "REQUIRED",
    "SCHEMA",
    "AgentConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DriftConfig",
    "ImapConfig",
    "Key",
    "LimitsConfig",
    "Many",
    "QuarantineConfig",
    "QueueConfig",
    "RoutingRule",
    "Section",
    "Security",
    "SecurityConfig",
    "SmtpConfig",
    "TicketsConfig",
    "TlsSettings",
    "describe",
    "field_default",
    "load_config",
    "mask_url",
    "parse_config",
    "secret_path",
]
