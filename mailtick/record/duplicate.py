"""Stage `record`, step `duplicate`: a Message-ID already stored is not recorded again. Database.

A refetch after a crash before the MOVE, or a second delivery of the same mail,
ends here as Ignored: the pipeline acknowledges it to its source, nothing is written.
"""

from __future__ import annotations

from mailtick.outcomes import Ignored
from mailtick.record.intake import Intake, Recorded


def refuse_duplicate(intake: Intake) -> Recorded | None:
    """Ignored when the Message-ID is stored; None (pass) otherwise."""
    message_id = intake.mail.message_id
    if intake.lookup.ticket_of(message_id) is not None:
        raise Ignored(f"duplicate Message-ID {message_id}")
    return None
