"""systemd's sd_notify protocol (READY, STATUS, WATCHDOG, STOPPING). Touches a Unix socket only.

`Type=notify` services tell systemd how they are doing with one-line `KEY=value`
datagrams to the `AF_UNIX` socket named in `$NOTIFY_SOCKET` (a path, or an
abstract name written with a leading "@"). Without that variable, as outside
systemd, every call does nothing. A datagram that cannot be sent is logged at
DEBUG and forgotten: telling systemd must never take the daemon down.

`keep_alive` is the watchdog loop: it pings only while the daemon is healthy, so
that systemd restarts a daemon that hangs or has lost its mailbox for too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("mailtick.notify")

SEND_TIMEOUT = 1.0  # seconds: systemd reads its socket at once; never stall the event loop long
STATUS_TICK = 5.0  # seconds between health checks (and STATUS= updates) at most


def socket_address(raw: str) -> str | None:
    """$NOTIFY_SOCKET as an address for sendto(); None when unset or of a kind we don't speak."""
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    if raw:
        log.debug("NOTIFY_SOCKET=%r is neither a path nor an abstract name: not notifying", raw)
    return None


_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _positive_int(raw: str | None) -> int | None:
    try:
        value = int(raw or "")
    except ValueError:
        return None
    return value if value > 0 else None


class Notifier:
    """Sends sd_notify(3) messages to $NOTIFY_SOCKET; a no-op when it is unset. Never raises."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.env = {key: env[key] for key in _VARIABLES if key in env}  # nothing else (secrets)
        self.address = socket_address(self.env.get("NOTIFY_SOCKET", ""))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> None:
        """Start-up is done: systemd starts the units ordered after us."""
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """A one-line state shown by `systemctl status`."""
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Still alive and well: resets systemd's WatchdogSec= timer."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutting down on request: not a crash."""
        self.send("STOPPING=1", "STATUS=stopping")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1: half of $WATCHDOG_USEC, as systemd recommends.

        None when systemd asked for no watchdog, or asked another process
        ($WATCHDOG_PID is not ours: the variables were inherited)."""
        usec = _positive_int(self.env.get("WATCHDOG_USEC"))
        pid = self.env.get("WATCHDOG_PID")
        if usec is None or (pid and _positive_int(pid) != os.getpid()):
            return None
        return usec / 2 / 1_000_000

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; False when it was not sent (or not wanted)."""
        if self.address is None:
            return False
        message = "\n".join(" ".join(field.splitlines()) for field in fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(message.encode("utf-8", "replace"), self.address)
        except (OSError, ValueError) as exc:
            log.debug("sd_notify %r to %r failed: %s", message, self.env["NOTIFY_SOCKET"], exc)
            return False
        return True


def health_text(up: bool, ever_up: bool, healthy: bool, grace: float) -> str:
    """The STATUS= line for the watcher's state."""
    if up:
        return "IMAP connected, waiting for mail"
    if not healthy:
        return f"no IMAP session for over {grace:g}s: unhealthy, watchdog pings withheld"
    return "IMAP unreachable: reconnecting" if ever_up else "connecting to IMAP, catching up"


def database_text(usable: bool, healthy: bool, grace: float) -> str:
    """The STATUS= part for the database ("" while it answers)."""
    if usable:
        return ""
    if not healthy:
        return f"database unusable for over {grace:g}s: unhealthy, watchdog pings withheld"
    return "database unavailable: reconnecting"


@dataclass
class Health:
    """One thing the daemon needs (its IMAP session, its database), as the watchdog sees it:
    up while `event` is set; healthy while up or down for less than the grace. No event:
    always up."""

    event: asyncio.Event | None
    last_up: float
    up: bool = True
    ever_up: bool = False

    def healthy(self, now: float, grace: float) -> bool:
        self.up = self.event is None or self.event.is_set()
        if self.up:
            self.last_up, self.ever_up = now, True
        return now - self.last_up < grace


async def keep_alive(
    notifier: Notifier,
    connected: asyncio.Event,
    stop: asyncio.Event,
    *,
    grace: float,
    tick: float = STATUS_TICK,
    note: Callable[[], str] = lambda: "",
    database: asyncio.Event | None = None,
) -> None:
    """STATUS= on each change and WATCHDOG=1 while healthy, until `stop` is set.

    Healthy: `connected` is set (a live IMAP session), or it was set (or this
    loop started) less than `grace` seconds ago; and the same for `database`
    (set while the database answers, cleared when a connection fails). A hung
    event loop sends nothing, and neither does a daemon that has been without its
    mailbox or its database for longer than `grace`: either way systemd's
    WatchdogSec= runs out and systemd restarts the service. A shorter outage only
    changes the STATUS=. `note` adds what the sysadmin should look at.
    """
    if not notifier.enabled:
        await stop.wait()
        return
    interval = notifier.watchdog_interval()
    tick = min(tick, interval) if interval is not None else tick
    loop = asyncio.get_running_loop()
    imap, db = Health(connected, loop.time()), Health(database, loop.time())
    shown = ""
    while not stop.is_set():
        now = loop.time()
        imap_ok, db_ok = imap.healthy(now, grace), db.healthy(now, grace)
        healthy = imap_ok and db_ok
        parts = (
            health_text(imap.up, imap.ever_up, imap_ok, grace),
            database_text(db.up, db_ok, grace),
            note(),
        )
        text = "; ".join(part for part in parts if part)
        if text != shown:
            notifier.status(text)
            shown = text
        if healthy and interval is not None:
            notifier.watchdog()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick)
