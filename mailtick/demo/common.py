"""Demo: what all its parts share (host, support address, prefix, DemoFailed). Touches nothing."""

from __future__ import annotations

HOST = "127.0.0.1"
SUPPORT = "support@example.com"
SUPPORT_NAME = "Example Support"
SUPPORT_FROM = f"{SUPPORT_NAME} <{SUPPORT}>"
PREFIX = "MT"
WAIT_SECONDS = 15.0  # longest wait for any one expectation


class DemoFailed(Exception):
    """An expectation of the script was not met, or the demo could not start."""


class Interrupted(Exception):
    """The daemon stopped on a signal (Ctrl-C, SIGTERM) before the script ended: not a failure."""


def tag(number: str) -> str:
    return f"[{PREFIX}#{number}]"
