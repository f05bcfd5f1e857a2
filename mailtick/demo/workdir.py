"""Demo: its temporary directory (config.toml, reply secret, log). Touches files and logging."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mailtick.demo.common import HOST, PREFIX, SUPPORT, SUPPORT_FROM
from mailtick.demo.people import BERT, DANA
from mailtick.security import generate_secret

PASSWORD_ENV = "MAILTICK_IMAP_PASSWORD"
SECRET_FILE = "reply-secret"  # in the demo's temporary directory, next to config.toml
LOGGERS = {"mailtick": None, "pymap": logging.WARNING, "mail.log": logging.WARNING}

# The demo's config.toml; relative paths are relative to the temporary directory.
CONFIG_TEMPLATE = """\
# mailtick demo: embedded servers on {host}; this file is deleted when the demo ends.
[imap]
host = "{host}"
port = {imap_port}
security = "none"
username = "{support}"
password_env = "{password_env}"
idle = true
poll_interval = 0.5
reconnect_min = 0.2
reconnect_max = 2

[smtp]
host = "{host}"
port = {smtp_port}
security = "none"
from_address = "{support_from}"
retry_min = 1
retry_max = 5

[database]
url = "sqlite:///mailtick.db"

[tickets]
prefix = "{prefix}"
default_language = "de"

[log]
level = "INFO"

[quarantine]
directory = "quarantine"

[drift]
action = "warn"

[security]
secret_file = "{secret_file}"

[[agents]]
name = "{agent.name}"
addresses = ["{agent.addr}"]
display_name = "{agent.display_name}"

[[agents]]
name = "{billing.name}"
addresses = ["{billing.addr}"]
display_name = "{billing.display_name}"
queues = ["billing"]

[[queues]]
name = "billing"
leads = ["{billing.name}"]

[[routing]]
name = "outage"
priority = "urgent"
words = ["Server ausgefallen", "server down"]

[[routing]]
name = "invoices"
queue = "billing"
words = ["Rechnung", "Kündigung", "invoice"]
"""


def config_text(imap_port: int, smtp_port: int) -> str:
    return CONFIG_TEMPLATE.format(
        host=HOST,
        imap_port=imap_port,
        smtp_port=smtp_port,
        support=SUPPORT,
        support_from=SUPPORT_FROM,
        password_env=PASSWORD_ENV,
        prefix=PREFIX,
        secret_file=SECRET_FILE,
        agent=DANA,
        billing=BERT,
    )


def write_secret(path: Path) -> None:
    """The key that signs the agents' reply addresses, as `mailtick init` writes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(generate_secret().hex() + "\n")


@contextlib.contextmanager
def logging_to(path: Path, level: str) -> Iterator[None]:
    """mailtick's (and the servers') log lines go to `path`, not the terminal; undone after."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name, own_level in LOGGERS.items():
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(own_level or level)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, old_level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate
        handler.close()
