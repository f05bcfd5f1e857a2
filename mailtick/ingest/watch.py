"""Stage `poll` driver: catch up from the UID cursor, IDLE or poll, reconnect. Network + DB.

The mail on the server is the queue entry: a mail is moved to the processed (or
quarantine) mailbox only after the pipeline committed it, and the cursor moves
only past mails that were moved. A crash anywhere means a refetch, which the
pipeline's dedupe keys turn into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import peewee as pw

from mailtick.config import ImapConfig
from mailtick.db import MailboxCursor, write_transaction
from mailtick.ingest.imap import ImapConnection, Selected
from mailtick.ingest.workers import Parsed
from mailtick.leader import TRY_EVERY, Leadership, wait_to_lead
from mailtick.mail import RawMail
from mailtick.outcomes import Transient
from mailtick.pipeline import Action
from mailtick.store import Store

log = logging.getLogger("mailtick.ingest")


class Handler(Protocol):
    """The pipeline as the watcher sees it (pipeline.Pipeline)."""

    async def prepare(self, raws: Sequence[RawMail]) -> list[Parsed] | None: ...

    async def commit(
        self, raws: Sequence[RawMail], parsed: list[Parsed] | None
    ) -> list[Action]: ...


Prepared = tuple[list[RawMail], list[Parsed] | None]


@dataclass
class Counts:
    fetched: int = 0
    acked: int = 0
    quarantined: int = 0
    retry: int = 0
    first_retry: int | None = None  # the lowest UID left for a retry: the cursor stays below


def load_cursor(db: pw.Database, selected: Selected) -> int:
    """The last handled UID; 0 (start over, dedupe by Message-ID) when UIDVALIDITY changed."""
    with write_transaction(db):
        row = _cursor(selected.account, selected.mailbox) or _adopted(selected)
        if row is None:
            MailboxCursor.insert(
                account=selected.account,
                mailbox=selected.mailbox,
                uidvalidity=selected.uidvalidity,
            ).on_conflict_ignore().execute()  # another instance may have just created it
            return 0
        if int(row.uidvalidity) != selected.uidvalidity:
            log.warning(
                "UIDVALIDITY of %s changed %s -> %s: rescanning, duplicates matched by Message-ID",
                selected.mailbox,
                row.uidvalidity,
                selected.uidvalidity,
            )
            row.uidvalidity, row.last_uid = selected.uidvalidity, 0
            row.save()
        return int(row.last_uid)


def _cursor(account: str, mailbox: str) -> MailboxCursor | None:
    query = MailboxCursor.select().where(
        (MailboxCursor.account == account) & (MailboxCursor.mailbox == mailbox)
    )
    return query.first()  # type: ignore[no-any-return]


def _adopted(selected: Selected) -> MailboxCursor | None:
    """A cursor from before schema 3 (account unknown) with this mailbox's name becomes
    this account's: the first account to start after the upgrade goes on where it was."""
    row = _cursor("", selected.mailbox)
    if row is not None:
        row.account = selected.account
        row.save()
        log.info("cursor of %s adopted by %s", selected.mailbox, selected.account)
    return row


def save_cursor(db: pw.Database, selected: Selected, last_uid: int) -> None:
    with write_transaction(db):
        MailboxCursor.update(last_uid=last_uid).where(
            (MailboxCursor.account == selected.account)
            & (MailboxCursor.mailbox == selected.mailbox)
            & (MailboxCursor.uidvalidity == selected.uidvalidity)
            & (MailboxCursor.last_uid < last_uid)
        ).execute()


class Backoff:
    """Exponential backoff with jitter: min, 2*min, 4*min ... max, each times 0.5..1."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self.failures = low, high, 0

    def next_delay(self) -> float:
        delay = min(self.high, self.low * 2**self.failures)
        self.failures += 1
        return float(delay * random.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.failures = 0


class Watcher:
    """Keeps one mailbox drained: connect, catch up, wait for news, repeat; forever."""

    def __init__(
        self,
        config: ImapConfig,
        store: Store,
        handle: Handler,
        max_bytes: int,
        leadership: Leadership,
        try_every: float = TRY_EVERY,
    ) -> None:
        self.config = config
        self.store = store
        self.handle = handle
        self.max_bytes = max_bytes  # larger mail is not downloaded (tickets.max_mail_bytes)
        self.leadership = leadership  # only the leader fetches and moves (see leader.py)
        self.try_every = try_every  # a standby's seconds between tries to lead
        self.backoff = Backoff(config.reconnect_min, config.reconnect_max)
        # set while a session is healthy, or while standing by (for the watchdog)
        self.connected = asyncio.Event()
        self.stop: asyncio.Event | None = None  # run(): after a stop no new batch is begun

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by until this instance leads the mailbox, then keep it drained until the
        leadership is lost (stand by again) or `stop` is set (give the leadership up)."""
        self.stop = stop
        try:
            while not stop.is_set():
                self.connected.set()  # a standby is healthy too
                if not await wait_to_lead(self.leadership, stop, self.try_every):
                    break
                await self._lead(stop)
        finally:
            await self.leadership.resign()

    async def _lead(self, stop: asyncio.Event) -> None:
        """Sessions, as long as the leadership holds; cancelled the moment it is lost (as
        safe as a crash: the next leader refetches what was not moved yet)."""
        sessions = asyncio.ensure_future(self._sessions(stop))
        lost = asyncio.ensure_future(self.leadership.lost())
        try:
            await asyncio.wait({sessions, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sessions, lost):
                task.cancel()
            await asyncio.gather(sessions, lost, return_exceptions=True)
        if not sessions.cancelled() and (error := sessions.exception()) is not None:
            raise error  # a stage that dies takes the daemon down (systemd restarts it)

    async def _sessions(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(stop)
            except Transient as exc:
                self.connected.clear()
                delay = self.backoff.next_delay()
                log.warning("IMAP session ended: %s; reconnecting in %.1fs", exc.reason, delay)
                await self._pause(stop, delay)

    async def run_once(self) -> Counts:
        """Connect, drain the mailbox once, log out. Raises Transient on trouble. Nothing
        to do when another instance leads the mailbox (it drains it)."""
        if not await self.leadership.try_lead():
            log.info("another instance leads %s: not fetching", self.config.mailbox)
            return Counts()
        try:
            return await self._drain_once()
        finally:
            await self.leadership.resign()

    async def _drain_once(self) -> Counts:
        conn = ImapConnection(self.config)
        try:
            await conn.open()
            await self.prepare(conn)
            return await self.catch_up(conn)
        finally:
            await conn.close()

    async def _session(self, stop: asyncio.Event) -> None:
        conn = ImapConnection(self.config)
        try:
            await conn.open()
            await self.prepare(conn)
            use_idle = self.config.idle and conn.has("IDLE")
            log.info(
                "IMAP connected to %s:%s (%s), waiting with %s",
                self.config.host,
                self.config.port,
                self.config.security,
                "IDLE" if use_idle else f"polling every {self.config.poll_interval:g}s",
            )
            while not stop.is_set():
                counts = await self.catch_up(conn)
                self.connected.set()
                self.backoff.reset()
                if counts.retry:
                    await self._pause(stop, self.backoff.next_delay())
                elif counts.fetched or conn.news:
                    continue  # mail may have come in meanwhile: look again before waiting
                elif use_idle:
                    await conn.idle(self.config.idle_timeout, stop)
                else:
                    await self._pause(stop, self.config.poll_interval)
        finally:
            self.connected.clear()
            await conn.close()

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def prepare(self, conn: ImapConnection) -> None:
        for name in (self.config.processed_mailbox, self.config.quarantine_mailbox):
            await conn.ensure_mailbox(name)

    async def catch_up(self, conn: ImapConnection) -> Counts:
        """Fetch everything above the cursor in batches and hand each mail to the pipeline."""
        selected = await conn.select(self.config.mailbox)
        conn.news = False  # what arrives from now on is announced or found by the search
        last_uid = await self.store.run(load_cursor, self.store.db, selected)
        counts = Counts()
        if selected.exists == 0:
            return counts
        pending = await conn.uids_after(last_uid)
        size = self.config.batch_size
        batches = [pending[start : start + size] for start in range(0, len(pending), size)]
        # The next batch is fetched and parsed while this one is recorded (two in memory).
        ahead = asyncio.ensure_future(self._fetch(conn, selected, batches[0])) if batches else None
        try:
            for number, batch in enumerate(batches):
                assert ahead is not None
                prepared = await ahead
                ahead = None
                if self.stop is not None and self.stop.is_set():
                    _leave_for_next_time(batches[number:])
                    break
                if number + 1 < len(batches):
                    ahead = asyncio.ensure_future(self._fetch(conn, selected, batches[number + 1]))
                if not await self._batch(conn, selected, batch, prepared, counts):
                    break
        finally:
            if ahead is not None:  # let the answer arrive: a cancelled FETCH would
                with contextlib.suppress(Exception):  # leave the session out of step
                    await ahead
        return counts

    async def _fetch(self, conn: ImapConnection, selected: Selected, uids: list[int]) -> Prepared:
        """Sizes first: a mail above max_bytes is not downloaded, only its header."""
        sizes = await conn.sizes(uids)
        big = [uid for uid in uids if sizes.get(uid, 0) > self.max_bytes]
        small = [uid for uid in uids if sizes.get(uid, 0) <= self.max_bytes]
        fetched = dict(await conn.fetch(small)) if small else {}
        if big:
            fetched.update(await conn.fetch_headers(big))
        raws = [
            RawMail(
                selected.mailbox,
                selected.uidvalidity,
                uid,
                fetched[uid],
                sizes.get(uid, 0),
                selected.account,
            )
            for uid in uids
            if uid in fetched  # a mail expunged meanwhile is simply gone
        ]
        return raws, await self.handle.prepare(raws)

    async def _batch(
        self,
        conn: ImapConnection,
        selected: Selected,
        uids: list[int],
        prepared: Prepared,
        counts: Counts,
    ) -> bool:
        """Record one fetched batch, then MOVE the handled mails and advance the cursor.
        A mail left for a retry keeps the cursor below it (the mails after it are handled
        and moved all the same); False when nothing could be handled (stop for now)."""
        raws, parsed = prepared
        counts.fetched += len(raws)
        done: dict[Action, list[int]] = {Action.ACK: [], Action.QUARANTINE: []}
        for raw, action in zip(raws, await self.handle.commit(raws, parsed), strict=True):
            if action is Action.RETRY:
                counts.retry += 1
                counts.first_retry = min(raw.uid, counts.first_retry or raw.uid)
            else:
                done[action].append(raw.uid)
        await self._move(conn, done[Action.ACK], self.config.processed_mailbox)
        await self._move(conn, done[Action.QUARANTINE], self.config.quarantine_mailbox)
        counts.acked += len(done[Action.ACK])
        counts.quarantined += len(done[Action.QUARANTINE])
        handled = bool(done[Action.ACK] or done[Action.QUARANTINE])
        handled_up_to = uids[-1] if counts.first_retry is None else counts.first_retry - 1
        await self.store.run(save_cursor, self.store.db, selected, handled_up_to)
        return handled or not raws

    async def _move(self, conn: ImapConnection, uids: list[int], target: str) -> None:
        if uids:
            await conn.move(uids, target)


def _leave_for_next_time(batches: list[list[int]]) -> None:
    """A stop came: the batches not begun stay on the server (their tries not counted)."""
    uids = [uid for batch in batches for uid in batch]
    if uids:
        log.info(
            "stopping: %d mails (UID %d-%d) stay on the server for next time",
            len(uids),
            uids[0],
            uids[-1],
        )
