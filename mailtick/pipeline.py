"""The pipeline for one fetched mail: parse -> classify -> thread+record; outcomes mapped here.

Every mail ends in exactly one Action, decided in `process` and nowhere else:
ACK (committed or ignored: move it to the processed mailbox), QUARANTINE (rejected:
move it aside, reason stored) or RETRY (transient: leave it, try again later).
Touches the database through the Store.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mailtick.answers import Composer
from mailtick.ingest.classify import classify
from mailtick.ingest.parse import parse
from mailtick.mail import ParsedMail, RawMail
from mailtick.outcomes import Ignored, Rejected, Transient
from mailtick.quarantine import quarantine
from mailtick.store import Store
from mailtick.tickets import Recorded, RecordSettings, already_recorded, record

log = logging.getLogger("mailtick.ingest")


class Action(enum.Enum):
    ACK = "ack"
    QUARANTINE = "quarantine"
    RETRY = "retry"


@dataclass
class Pipeline:
    store: Store
    composer: Composer
    settings: RecordSettings
    max_bytes: int
    default_language: str
    outbox_changed: Callable[[], None]  # wakes the sender after a commit that queued mail

    async def process(self, raw: RawMail) -> Action:
        message_id = "-"
        try:
            if await self.store.run(already_recorded, self.store.db, raw):
                raise Ignored("already recorded (refetch)")
            mail = await self.store.run(parse, raw.data, self.default_language)
            message_id = mail.message_id
            recorded = await self._record(raw, mail)
        except Ignored as exc:
            log.info("ignored %s %s: %s", raw.where, message_id, exc.reason)
            return Action.ACK
        except Transient as exc:
            log.warning("retry later %s %s: %s", raw.where, message_id, exc.reason)
            return Action.RETRY
        except Rejected as exc:
            return await self._quarantine(raw, message_id, exc.reason)
        except Exception as exc:  # a bug must not stop the mails behind this one
            log.exception("internal error on %s %s", raw.where, message_id)
            return await self._quarantine(raw, message_id, f"internal error: {exc!r}")
        log.info(
            "%s %s %s -> %s#%s (%s)%s",
            "new ticket" if recorded.new_ticket else "threaded",
            raw.where,
            message_id,
            self.settings.prefix,
            recorded.ticket_number,
            recorded.rule,
            " reopened" if recorded.reopened else "",
        )
        if recorded.acknowledged:
            self.outbox_changed()
        return Action.ACK

    async def _record(self, raw: RawMail, mail: ParsedMail) -> Recorded:
        disposition = classify(mail, self.max_bytes)
        return await self.store.run(
            record, self.store.db, raw, mail, disposition, self.settings, self.composer
        )

    async def _quarantine(self, raw: RawMail, message_id: str, reason: str) -> Action:
        try:
            await self.store.run(quarantine, self.store.db, raw, message_id, reason)
        except Transient as exc:
            log.warning(
                "retry later %s %s: cannot quarantine: %s", raw.where, message_id, exc.reason
            )
            return Action.RETRY
        log.error("quarantined %s %s: %s", raw.where, message_id, reason)
        return Action.QUARANTINE
