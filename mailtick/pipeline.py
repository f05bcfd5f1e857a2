"""The pipeline for one FETCH batch: parse -> classify -> thread+record; outcomes mapped here.

Every mail ends in exactly one Action, decided in `_commit_one` and nowhere else:
ACK (recorded, or ignored as a duplicate: move it to the processed mailbox),
QUARANTINE (rejected: reason and bytes stored, move it aside) or RETRY (transient:
leave it on the server, try again later).

A batch is parsed first, then committed in ONE database transaction in which each
mail has its own savepoint: a mail's ticket, message, attachments and outbox rows are
stored together or not at all, and one fsync covers the batch. Nothing is moved on
the server before that commit. Touches the database through the Store.

The poison cap: before a mail is handled, its try is counted in the `attempt` table
and committed; the count is deleted in the transaction that records the mail's
outcome. A count left over therefore means the try failed (its parse timed out or
killed the parser, or the daemon died with the mail in hand). Such a suspect is
handled alone, never in a batch, so it cannot take other mails down with it, and
after `quarantine.max_attempts` failed tries it is quarantined without another try.
A try that failed for a reason not the mail's (the database went away) is not
counted.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from pathlib import Path

import peewee as pw

from mailtick.db import (
    Attempt,
    Message,
    is_connection_error,
    message_id_stored,
    utcnow,
    write_transaction,
)
from mailtick.ingest.classify import classify
from mailtick.ingest.workers import Parsed, ParsePool, parse_many
from mailtick.mail import ParsedMail, RawMail
from mailtick.outcomes import Ignored, Rejected, Transient
from mailtick.quarantine import add_quarantine
from mailtick.record.intake import Intake, Recorded, Settings
from mailtick.record.stage import record_mail
from mailtick.store import Store

log = logging.getLogger("mailtick.ingest")


class Action(enum.Enum):
    ACK = "ack"
    QUARANTINE = "quarantine"
    RETRY = "retry"


class FailedTry(Transient):
    """This mail's try failed for a reason that may be the mail's: counted (poison cap)."""


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
    settings: Settings
    max_bytes: int
    default_language: str
    outbox_changed: Callable[[], None]  # wakes the sender after a commit that queued mail
    parsers: ParsePool
    quarantine_dir: Path
    max_attempts: int  # the poison cap, quarantine.max_attempts
    quarantined: int = 0  # since start, for systemd's STATUS= line

    def status_note(self) -> str:
        """For `systemctl status`: quarantined mail needs the sysadmin's eyes."""
        if not self.quarantined:
            return ""
        return f"{self.quarantined} mail(s) quarantined since start: mailtick quarantine list"

    async def prepare(self, raws: Sequence[RawMail]) -> list[Parsed] | None:
        """Parse a batch in the worker processes (None: no workers, `commit` parses inline).
        A mail too big to download is not parsed: `commit` quarantines it."""
        if not self.parsers.wanted(len(raws)):
            return None
        whole = [raw.data for raw in raws if raw.complete]
        return self._all(raws, await self.parsers.parse(whole) if whole else [])

    def _all(self, raws: Sequence[RawMail], parsed_whole: list[Parsed]) -> list[Parsed]:
        """One result per mail: the parse of each whole mail, in order, and the Rejected
        outcome of each mail too big to download (it was not parsed)."""
        results = iter(parsed_whole)
        return [next(results) if raw.complete else _too_big(raw, self.max_bytes) for raw in raws]

    async def commit(self, raws: Sequence[RawMail], parsed: list[Parsed] | None) -> list[Action]:
        """Record a batch (parsed by `prepare`, or here); one Action per mail, in order.
        Mails that failed before are recorded one at a time (see the poison cap)."""
        if not raws:  # every mail of the batch was expunged between SEARCH and FETCH
            return []
        try:
            tries = await self.store.run(begin_batch, self.store.db, list(raws))
        except Transient as exc:
            return self._finish(raws, {}, exc)
        batch = [n for n, raw in enumerate(raws) if raw.uid not in tries]
        suspects = [n for n, raw in enumerate(raws) if raw.uid in tries]
        verdicts: dict[int, Verdict] = {}
        for group in ([batch] if batch else []) + [[n] for n in suspects]:
            group_raws = [raws[n] for n in group]
            group_parsed = None if parsed is None else [parsed[n] for n in group]
            try:
                if group is not batch:
                    [raw] = group_raws
                    tries[raw.uid] = await self.store.run(count_try, self.store.db, raw)
                done = await self.store.run(self._ingest, group_raws, group_parsed, tries)
            except Transient as exc:
                await self._not_their_fault(group_raws)
                return self._finish(raws, verdicts, exc)
            verdicts.update(zip(group, done, strict=True))
        return self._finish(raws, verdicts, None)

    def _finish(
        self, raws: Sequence[RawMail], verdicts: dict[int, Verdict], failure: Transient | None
    ) -> list[Action]:
        """Log one line per mail and return the actions; mails without a verdict retry."""
        actions: list[Action] = []
        for n, raw in enumerate(raws):
            verdict = verdicts.get(n)
            if verdict is None:
                reason = failure.reason if failure is not None else "not handled"
                verdict = Verdict(Action.RETRY, "-", "retry later", reason)
            levels = {Action.QUARANTINE: logging.ERROR, Action.RETRY: logging.WARNING}
            log.log(
                levels.get(verdict.action, logging.INFO),
                "%s %s %s %s",
                verdict.outcome,
                raw.where,
                verdict.message_id,
                verdict.detail,
            )
            actions.append(verdict.action)
            self.quarantined += verdict.action is Action.QUARANTINE
        if any(v.queued_mail for v in verdicts.values()):
            self.outbox_changed()
        return actions

    async def _not_their_fault(self, raws: list[RawMail]) -> None:
        """The database failed, not the mails: take back the tries just counted."""
        # When the database is still away, at worst a try too many is counted.
        with contextlib.suppress(Transient):
            await self.store.run(uncount_tries, self.store.db, raws)

    # -- on the store's thread ---------------------------------------------------------

    def _ingest(
        self, raws: list[RawMail], parsed: list[Parsed] | None, tries: dict[int, Attempt]
    ) -> list[Verdict]:
        db = self.store.db
        known = _recorded_uids(raws)
        if parsed is None:
            whole = [raw.data for raw in raws if raw.complete]
            parsed = self._all(raws, parse_many(whole, self.default_language))
        with write_transaction(db):
            verdicts = [
                self._judge(db, raw, None if raw.uid in known else mail, tries.get(raw.uid))
                for raw, mail in zip(raws, parsed, strict=True)
            ]
            ended = [
                raw.uid
                for raw, v in zip(raws, verdicts, strict=True)
                if v.action is not Action.RETRY
            ]
            end_tries(raws, ended)
        return verdicts

    def _judge(
        self, db: pw.Database, raw: RawMail, mail: Parsed | None, attempt: Attempt | None
    ) -> Verdict:
        """The poison cap first, then the mail's own outcome."""
        failed = int(attempt.count) - 1 if attempt is not None else 0  # tries before this one
        if failed >= self.max_attempts:
            why = (
                attempt.last_error
                if attempt is not None and attempt.last_error
                else ("the daemon stopped while handling it")
            )
            return _quarantined(
                db,
                raw,
                _header_message_id(raw),
                f"poison: {failed} tries failed ({why})",
                self.quarantine_dir,
            )
        if isinstance(mail, Transient):
            return self._failed_try(db, raw, failed + 1, mail.reason)
        try:
            return self._commit_one(db, raw, mail)
        except FailedTry as exc:
            return self._failed_try(db, raw, failed + 1, exc.reason)

    def _failed_try(self, db: pw.Database, raw: RawMail, tries: int, reason: str) -> Verdict:
        """This try failed: retry later, or quarantine once `max_attempts` tries failed."""
        message_id = _header_message_id(raw)
        if tries >= self.max_attempts:
            why = f"poison: {tries} tries failed ({reason})"
            return _quarantined(db, raw, message_id, why, self.quarantine_dir)
        note_failure(raw, reason)
        detail = f"{reason} (try {tries} of {self.max_attempts})"
        return Verdict(Action.RETRY, message_id, "retry later", detail)

    def _commit_one(
        self, db: pw.Database, raw: RawMail, mail: ParsedMail | Rejected | None
    ) -> Verdict:
        if mail is None:
            return Verdict(Action.ACK, "-", "ignored", "already recorded (refetch)")
        if isinstance(mail, Rejected):
            return _quarantined(db, raw, _header_message_id(raw), mail.reason, self.quarantine_dir)
        try:
            disposition = classify(mail, self.max_bytes)
            with db.atomic():  # a savepoint: this mail's rows, or none of them
                recorded = record_mail(Intake.of(raw, mail, disposition, self.settings))
        except Ignored as exc:
            return Verdict(Action.ACK, mail.message_id, "ignored", exc.reason)
        except Rejected as exc:
            return _quarantined(db, raw, mail.message_id, exc.reason, self.quarantine_dir)
        except pw.IntegrityError as exc:
            if not message_id_stored(mail.message_id):  # not proven a duplicate: retry
                raise FailedTry(f"database constraint: {exc}") from exc
            return Verdict(
                Action.ACK, mail.message_id, "ignored", "duplicate Message-ID (concurrent)"
            )
        except Exception as exc:
            if is_connection_error(exc):
                raise  # the whole batch is retried
            log.exception("internal error on %s %s", raw.where, mail.message_id)
            raise FailedTry(f"internal error: {exc!r}") from exc
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
            _verb(recorded),
            detail,
            queued_mail=recorded.queued_mail,
        )


def _verb(recorded: Recorded) -> str:
    """The log line's first word for a recorded mail."""
    if recorded.new_ticket:
        return "new ticket"
    return "bounce" if recorded.rule.startswith("bounce") else "threaded"


def _recorded_uids(raws: list[RawMail]) -> set[int]:
    """UIDs of this batch already stored (a refetch after a crash before the MOVE)."""
    if not raws:
        return set()
    first = raws[0]
    query = Message.select(Message.uid).where(
        (Message.account == first.account)
        & (Message.mailbox == first.mailbox)
        & (Message.uidvalidity == first.uidvalidity)
        & Message.uid.in_([raw.uid for raw in raws])
    )
    return {row.uid for row in query if row.uid is not None}


def _quarantined(
    db: pw.Database, raw: RawMail, message_id: str, reason: str, directory: Path
) -> Verdict:
    try:
        with db.atomic():
            number = add_quarantine(raw, message_id, reason, directory)
    except OSError as exc:  # the bytes could not be kept: the mail stays where it is
        note_failure(raw, f"cannot keep it in quarantine: {exc}")
        return Verdict(Action.RETRY, message_id, "retry later", f"{reason}; not quarantined: {exc}")
    detail = f"{reason} [mailtick quarantine show {number}]"
    return Verdict(Action.QUARANTINE, message_id, "quarantined", detail)


def _too_big(raw: RawMail, max_bytes: int) -> Rejected:
    return Rejected(
        f"too big: {raw.size} bytes, tickets.max_mail_bytes is {max_bytes}; only the header"
        " was downloaded (raise the limit, then `mailtick quarantine requeue`)"
    )


def _header_message_id(raw: RawMail) -> str:
    """The Message-ID from the header alone (for a mail that was not parsed)."""
    value = BytesHeaderParser().parsebytes(raw.data[:65536]).get("Message-ID", "")
    return " ".join(str(value).split())[:250] or "-"


# -- the poison cap's counts (on the store's thread) --------------------------------------

STALE_TRIES = timedelta(days=30)


_KEY = (Attempt.account, Attempt.mailbox, Attempt.uidvalidity, Attempt.uid)  # unique index


def _where(raws: Sequence[RawMail], uids: Sequence[int]) -> pw.Expression:
    """The rows of these UIDs of the batch's mailbox (`raws` is never empty)."""
    first = raws[0]
    return (
        (Attempt.account == first.account)
        & (Attempt.mailbox == first.mailbox)
        & (Attempt.uidvalidity == first.uidvalidity)
        & Attempt.uid.in_(list(uids))
    )


def begin_batch(db: pw.Database, raws: list[RawMail]) -> dict[int, Attempt]:
    """Count a try for each mail never tried before and commit it before the batch begins.
    Returns the earlier tries of the others (uid -> Attempt): the suspects, each counted
    by `count_try` right before it is handled alone. Race-free between instances: a try
    another instance counted meanwhile is kept (its insert is skipped)."""
    if not raws:
        return {}
    now = utcnow()
    with write_transaction(db):
        known = {int(a.uid): a for a in Attempt.select().where(_where(raws, [r.uid for r in raws]))}
        fresh = [
            _first_try(r, now) for r in sorted(raws, key=lambda r: r.uid) if r.uid not in known
        ]
        if fresh:
            Attempt.insert_many(fresh).on_conflict_ignore().execute()
    return known


def _first_try(raw: RawMail, now: datetime) -> dict[str, object]:
    return {
        "account": raw.account,
        "mailbox": raw.mailbox,
        "uidvalidity": raw.uidvalidity,
        "uid": raw.uid,
        "count": 1,
        "first_at": now,
        "last_at": now,
    }


def count_try(db: pw.Database, raw: RawMail) -> Attempt:
    """Count one more try of a suspect and commit it before the try begins. An upsert: the
    row may be gone meanwhile (another instance recorded the mail), then this is try 1."""
    now = utcnow()
    with write_transaction(db):
        Attempt.insert(_first_try(raw, now)).on_conflict(
            conflict_target=_KEY,
            update={Attempt.count: Attempt.count + 1, Attempt.last_at: now},
        ).execute()
        attempt: Attempt = Attempt.get(_where([raw], [raw.uid]))
    return attempt


def forget_stale_tries(db: pw.Database) -> int:
    """At start-up: tries left by mails that vanished from the server (moved by hand)."""
    with write_transaction(db):
        return int(Attempt.delete().where(Attempt.last_at < utcnow() - STALE_TRIES).execute())


def uncount_tries(db: pw.Database, raws: list[RawMail]) -> None:
    with write_transaction(db):
        Attempt.update(count=Attempt.count - 1).where(_where(raws, [r.uid for r in raws])).execute()
        Attempt.delete().where(_where(raws, [r.uid for r in raws]) & (Attempt.count <= 0)).execute()


def end_tries(raws: list[RawMail], uids: list[int]) -> None:
    """The mails' outcome is recorded: forget their tries (inside that transaction)."""
    if uids:
        Attempt.delete().where(_where(raws, uids)).execute()


def note_failure(raw: RawMail, reason: str) -> None:
    Attempt.update(last_error=reason[:500]).where(_where([raw], [raw.uid])).execute()
