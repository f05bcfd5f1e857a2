"""Composition root: builds every stage from the Config and owns the daemon's lifecycle.

Nothing else constructs long-lived objects. `Daemon.run` is `mailtick run`;
`Daemon.run_once` is `mailtick run --once` (catch up, send what is due, exit).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from mailtick.answers import Composer
from mailtick.config import Config, ConfigError, ImapConfig, load_config
from mailtick.db import check_durability
from mailtick.identify import Desk
from mailtick.ingest.imap import account_of
from mailtick.ingest.parse import warm_up
from mailtick.ingest.watch import Counts, Watcher
from mailtick.ingest.workers import ParsePool
from mailtick.leader import for_database
from mailtick.notify import Notifier, keep_alive
from mailtick.pipeline import Pipeline, forget_stale_tries
from mailtick.record.intake import Settings
from mailtick.security import TokenSigner
from mailtick.send import SendCounts, Sender
from mailtick.store import Store

log = logging.getLogger("mailtick")

# After SIGTERM the stages get STOP_GRACE seconds to finish the mail in hand (the batch
# being recorded is committed and moved, a mail being sent is marked sent). What still
# runs then waits on a server that hangs: it is cancelled, which is as safe as a crash
# (the mail stays on the server, the refetch is deduplicated). A cancelled stage gets
# CANCEL_WAIT seconds to end (its `finally` may say LOGOUT or QUIT), twice, and is then
# left behind. So the daemon is gone within about 10 s, well inside systemd's
# TimeoutStopSec (90 s by default), whatever the IMAP and SMTP timeouts are.
STOP_GRACE = 5.0
CANCEL_WAIT = 2.0


@dataclass(frozen=True)
class OnceResult:
    ingest: Counts
    send: SendCounts


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.database.url)
        self.composer = Composer(
            config.smtp.from_address, config.tickets.prefix, config.tickets.default_language
        )
        self.sender = Sender(config.smtp, self.store)
        self.parsers = ParsePool(
            config.imap.parse_workers, config.tickets.default_language, config.imap.parse_timeout
        )
        self.pipeline = Pipeline(
            store=self.store,
            settings=Settings(
                tickets=config.tickets,
                drift=config.drift,
                limits=config.limits,
                composer=self.composer,
                desk=make_desk(config, self.composer),
                routing=config.routing,
            ),
            max_bytes=config.tickets.max_mail_bytes,
            default_language=config.tickets.default_language,
            outbox_changed=self.sender.notify,
            parsers=self.parsers,
            quarantine_dir=config.quarantine.directory,
            max_attempts=config.quarantine.max_attempts,
        )
        self.leadership = for_database(
            config.database.url, self.store, account_of(config.imap), config.imap.mailbox
        )
        self.watcher = Watcher(
            config.imap, self.store, self.pipeline, config.tickets.max_mail_bytes, self.leadership
        )
        self.stop = asyncio.Event()
        self.next_config: Config | None = None  # set by a SIGHUP with a valid config file
        self.notifier = Notifier()  # systemd Type=notify; a no-op outside systemd

    @staticmethod
    def support_address(config: Config) -> str:
        return Composer(config.smtp.from_address, "MT", "en").sender.addr_spec.lower()

    async def open(self) -> None:
        self.leadership.claim()  # SQLite: refuse to be a second instance (AlreadyRunning)
        db = await self.store.open()
        await self.store.run(check_durability, db)
        if stale := await self.store.run(forget_stale_tries, db):
            log.info("forgot %d tries of mails gone from the server for 30 days", stale)
        await self.store.run(warm_up)  # load the language model now, not on the first mail
        self.parsers.start()  # fork the parse workers now: they inherit the loaded model

    async def close(self) -> None:
        await self.leadership.resign()
        self.parsers.close()
        await self.store.close()

    async def run(self) -> Config | None:
        """The daemon: ingest and send until SIGTERM/SIGINT, then shut down cleanly.
        Returns the new configuration when SIGHUP asked for a reload (see `serve`).
        The signals are handled from the first moment: a SIGTERM during start-up (schema,
        language model) is a clean stop too, not a kill."""
        self.leadership.claim()  # before anything else: a second SQLite instance just says no
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.open()
            await self._stages()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.close()
            log.info("mailtick stopped" if self.next_config is None else "mailtick reloading")
        return self.next_config

    async def _stages(self) -> None:
        """Ingest and send until a stop is requested; raise when a stage dies (exit non-zero
        so that systemd restarts us) or failed while stopping."""
        log.info(
            "mailtick started: %s@%s/%s",
            self.config.imap.username,
            self.config.imap.host,
            self.config.imap.mailbox,
        )
        tasks = [
            asyncio.create_task(self.watcher.run(self.stop), name="ingest"),
            asyncio.create_task(self.sender.run(self.stop), name="send"),
        ]
        stopper = asyncio.create_task(self.stop.wait())
        # systemd: READY=1 now, then STATUS= and WATCHDOG=1 while healthy (watchdog_grace)
        imap, grace = self.config.imap, watchdog_grace(self.config.imap)
        self.notifier.ready(f"started: {imap.username} at {imap.host}, mailbox {imap.mailbox}")
        keeper = asyncio.create_task(
            keep_alive(
                self.notifier,
                self.watcher.connected,
                self.stop,
                grace=grace,
                note=self.pipeline.status_note,
                database=self.store.usable,
            ),
            name="systemd",
        )
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            if stopper not in done:  # a stage died: exit non-zero so systemd restarts us
                self.stop.set()
                for task in done:
                    task.result()
                raise RuntimeError("a stage ended unexpectedly")
        finally:
            stopper.cancel()
            keeper.cancel()
            await wind_down(tasks)
        for task in tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error

    def reload(self) -> None:
        """SIGHUP: restart the stages with the config file as it is now, if it is valid;
        an invalid file is logged, and the running configuration stays."""
        source = self.config.source
        if source is None:
            log.error("SIGHUP: no config file to reload, keeping the running configuration")
            return
        try:
            self.next_config = load_config(source)
        except ConfigError as exc:
            problems = "; ".join(exc.problems)
            log.error(
                "SIGHUP: %s is not valid, keeping the running configuration: %s", source, problems
            )
            return
        log.info("reloading %s (SIGHUP)", source)
        self.notifier.send("RELOADING=1")
        self.stop.set()

    def request_stop(self, why: str = "request") -> None:
        log.info("stopping (%s)", why)
        self.notifier.stopping()
        self.stop.set()

    async def run_once(self) -> OnceResult:
        """Catch up with the mailbox, send what is due, close. Raises Transient on trouble."""
        await self.open()
        try:
            done = asyncio.Event()
            sending = asyncio.create_task(
                self.sender.run(done), name="send"
            )  # acks go out meanwhile
            try:
                ingest = await self.watcher.run_once()
            finally:
                done.set()
                self.sender.notify()
                await sending
            await self.sender.drain()  # what the last batch queued
            return OnceResult(ingest, self.sender.totals)
        finally:
            await self.close()


async def serve(config: Config) -> None:
    """`mailtick run`: the daemon, rebuilt from the new configuration after each SIGHUP."""
    next_config: Config | None = config
    while next_config is not None:
        next_config = await Daemon(next_config).run()


async def wind_down(tasks: Sequence[asyncio.Task[None]], grace: float = STOP_GRACE) -> None:
    """The stages were told to stop: give them `grace` seconds to finish the mail in hand,
    then cancel what still runs (see STOP_GRACE). No wait here is unbounded."""
    running = {task for task in tasks if not task.done()}
    if running:
        _, running = await asyncio.wait(running, timeout=grace)
    for _ in range(2):  # a cancelled stage may await again in a `finally`: cancel that too
        if not running:
            return
        names = ", ".join(sorted(task.get_name() for task in running))
        log.warning("stopping: cancelling %s (still busy after %gs)", names, grace)
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=CANCEL_WAIT)
    if running:
        names = ", ".join(sorted(task.get_name() for task in running))
        log.error("stopping: %s did not end when cancelled; exiting without it", names)


def make_desk(config: Config, composer: Composer) -> Desk | None:
    """The agents and the signer of their reply tokens; None without agents."""
    if not config.agents:
        return None
    return Desk(
        agents=config.agents,
        signer=TokenSigner(config.security.secret, config.security.token_days),
        support_addr=composer.sender.addr_spec.lower(),
        authserv_id=config.security.authserv_id,
    )


def watchdog_grace(imap: ImapConfig) -> float:
    """How long the daemon may be without an IMAP session and still feed systemd's watchdog.

    Three IDLE renewals or three of the longest reconnect delays, whichever is
    longer: 15 minutes with the defaults. A mail server restart, a network blip
    or a reconnect backoff pass quietly (STATUS= says "reconnecting"); a mailbox
    out of reach for longer stops the WATCHDOG=1 pings, so systemd restarts the
    service (WatchdogSec= later), which shows the outage in `systemctl status`
    and starts afresh: new DNS lookups, TLS and database connections. The first
    catch-up after a (re)connect counts as "without a session": a backlog that
    takes longer than this restarts the daemon, which goes on where the cursor
    stopped (it moves after every batch).
    """
    return 3 * max(imap.idle_timeout, imap.reconnect_max)
