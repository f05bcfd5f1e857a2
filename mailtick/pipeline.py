"""The pipeline for one FETCH batch: parse -> classify -> thread+record; outcomes mapped here.

Every mail ends in exactly one Action, decided in `_commit_one` and nowhere else:
ACK (recorded, or ignored as a duplicate: move it to the processed mailbox),
QUARANTINE (rejected: reason and bytes stored, move it aside) or RETRY (transient:
leave it on the server, try again later).

A batch is parsed first, then committed in ONE database transaction in which each
mail has its own savepoint: a mail's ticket, message, attachments and outbox rows are
stored together or not at all, and one fsync covers the batch. Nothing is moved on
the server before that commit. Touches the database through the Store.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import peewee as pw

from mailtick.answers import Composer
from mailtick.db import Message, is_connection_error, write_transaction
from mailtick.ingest.classify import classify
from mailtick.ingest.workers import Parsed, ParsePool, parse_many
from mailtick.mail import ParsedMail, RawMail
from mailtick.outcomes import Ignored, Rejected, Transient
from mailtick.quarantine import add_quarantine
from mailtick.store import Store
from mailtick.tickets import RecordSettings, record_mail

log = logging.getLogger("mailtick.ingest")


class Action(enum.Enum):
    ACK = "ack"
    QUARANTINE = "quarantine"
    RETRY = "retry"


@dataclass(frozen=True)
class Verdict:
    action: Action
    message_id: str
    outcome: str  # the log line's verb: "new ticket", "threaded", "ignored", "quarantined"
    detail: str
    queued_mail: bool = False


@dataclass
class Pipeline:
    store: Store
    composer: Composer
    settings: RecordSettings
    max_bytes: int
    default_language: str
    outbox_changed: Callable[[], None]  # wakes the sender after a commit that queued mail
    parsers: ParsePool

    async def prepare(self, raws: Sequence[RawMail]) -> list[Parsed] | None:
        """Parse a big batch in the worker processes (None: `commit` parses inline)."""
        if not self.parsers.wanted(len(raws)):
            return None
        try:
            return await self.parsers.parse([raw.data for raw in raws])
        except Transient as exc:
            log.warning("parsing inline: %s", exc.reason)
            return None

    async def process(self, raws: Sequence[RawMail]) -> list[Action]:
        """Handle one batch; returns one Action per mail, in order."""
        return await self.commit(raws, await self.prepare(raws))

    async def commit(self, raws: Sequence[RawMail], parsed: list[Parsed] | None) -> list[Action]:
        """Record a batch (parsed by `prepare`, or here); one Action per mail, in order."""
        try:
            verdicts = await self.store.run(self._ingest, list(raws), parsed)
        except Transient as exc:
            for raw in raws:
                log.warning("retry later %s: %s", raw.where, exc.reason)
            return [Action.RETRY] * len(raws)
        for raw, verdict in zip(raws, verdicts, strict=True):
            level = logging.ERROR if verdict.action is Action.QUARANTINE else logging.INFO
            log.log(
                level, "%s %s %s %s", verdict.outcome, raw.where, verdict.message_id, verdict.detail
            )
        if any(v.queued_mail for v in verdicts):
            self.outbox_changed()
        return [v.action for v in verdicts]

    # -- on the store's thread ---------------------------------------------------------

    def _ingest(self, raws: list[RawMail], parsed: list[Parsed] | None) -> list[Verdict]:
        db = self.store.db
        known = _recorded_uids(raws)
        if parsed is None:
            parsed = parse_many([raw.data for raw in raws], self.default_language)
        mails = [None if raw.uid in known else mail for raw, mail in zip(raws, parsed, strict=True)]
        with write_transaction(db):
            return [self._commit_one(db, raw, mail) for raw, mail in zip(raws, mails, strict=True)]

    def _commit_one(
        self, db: pw.Database, raw: RawMail, mail: ParsedMail | Rejected | None
    ) -> Verdict:
        if mail is None:
            return Verdict(Action.ACK, "-", "ignored", "already recorded (refetch)")
        if isinstance(mail, Rejected):
            return _quarantined(db, raw, "-", mail.reason)
        try:
            disposition = classify(mail, self.max_bytes)
            with db.atomic():  # a savepoint: this mail's rows, or none of them
                recorded = record_mail(raw, mail, disposition, self.settings, self.composer)
        except Ignored as exc:
            return Verdict(Action.ACK, mail.message_id, "ignored", exc.reason)
        except Rejected as exc:
            return _quarantined(db, raw, mail.message_id, exc.reason)
        except pw.IntegrityError:  # another process stored the same Message-ID first
            return Verdict(
                Action.ACK, mail.message_id, "ignored", "duplicate Message-ID (concurrent)"
            )
        except Exception as exc:
            if is_connection_error(exc):
                raise  # the whole batch is retried
            log.exception("internal error on %s %s", raw.where, mail.message_id)
            return _quarantined(db, raw, mail.message_id, f"internal error: {exc!r}")
        detail = f"-> {self.settings.prefix}#{recorded.ticket_number} ({recorded.rule})"
        if recorded.reopened:
            detail += " reopened"
        if recorded.agent:
            detail += f" by agent {recorded.agent}"
        if recorded.flag:
            detail += f" FLAGGED: {recorded.flag}"
        return Verdict(
            Action.ACK,
            mail.message_id,
            "new ticket" if recorded.new_ticket else "threaded",
            detail,
            queued_mail=recorded.queued_mail,
        )


def _recorded_uids(raws: list[RawMail]) -> set[int]:
    """UIDs of this batch already stored (a refetch after a crash before the MOVE)."""
    if not raws:
        return set()
    first = raws[0]
    query = Message.select(Message.uid).where(
        (Message.mailbox == first.mailbox)
        & (Message.uidvalidity == first.uidvalidity)
        & Message.uid.in_([raw.uid for raw in raws])
    )
    return {row.uid for row in query if row.uid is not None}


def _quarantined(db: pw.Database, raw: RawMail, message_id: str, reason: str) -> Verdict:
    with db.atomic():
        add_quarantine(raw, message_id, reason)
    return Verdict(Action.QUARANTINE, message_id, "quarantined", reason)
