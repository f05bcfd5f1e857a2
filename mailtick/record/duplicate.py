"""Stage `record`, step `duplicate`: the same mail is not recorded twice. Database.

A refetch after a crash before the MOVE, or a second delivery of the same mail,
ends here as Ignored: the pipeline acknowledges it to its source, nothing is
written. "The same" is the Message-ID AND the content: broken mailers reuse ids, so
a different mail under a stored Message-ID is recorded under an id derived from its
content (a refetch of it derives the same id and is a duplicate in turn), flagged.
"""

from __future__ import annotations

import hashlib
import re

from mailtick.db import Message
from mailtick.outcomes import Ignored
from mailtick.record.intake import Intake, Recorded

_LINE_ENDS = re.compile(rb"[ \t]*\r?\n")


def refuse_duplicate(intake: Intake) -> Recorded | Intake | None:
    """Ignored for the same mail again; the mail renamed when its Message-ID is another
    mail's; None (pass) for a Message-ID never seen."""
    message_id = intake.mail.message_id
    if intake.lookup.ticket_of(message_id) is None:
        return None
    stored = Message.select(Message.data).where(Message.message_id == message_id).first()
    if stored is None or body_digest(bytes(stored.data)) == body_digest(intake.mail.raw):
        raise Ignored(f"duplicate Message-ID {message_id}")
    derived = f"<{body_digest(intake.mail.raw)[:40]}@reused-message-id.mailtick.invalid>"
    if Message.select(Message.id).where(Message.message_id == derived).exists():
        raise Ignored(f"duplicate of a mail that reused Message-ID {message_id}")
    return intake.renamed(derived, f"reused Message-ID {message_id} of another mail")


def body_digest(raw: bytes) -> str:
    """SHA-256 of the body (what follows the header), line ends and trailing blanks
    normalised: the same mail delivered twice, through other relays, has the same one."""
    _, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return hashlib.sha256(_LINE_ENDS.sub(b"\n", body).strip()).hexdigest()
