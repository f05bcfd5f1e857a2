"""Stage `record`: the table of steps a mail goes through, and its transaction. Database.

A mail becomes an Intake (intake.py), then the steps of STEPS run in order; the
first that returns a Recorded has handled the mail, a step that returns None passes
it on, one that returns an Intake passes on that one instead (the duplicate step
renames a reused Message-ID), and an outcome exception (Ignored, Rejected) ends it.
The last step, the customer's, handles every mail that reaches it. Steps never call
each other: they call down into the ledger (ledger.py), the only writer of tickets,
messages, events and outbox rows, and into the letters they queue (letters.py).

    duplicate        Message-ID already stored          -> Ignored (the same mail again),
                                                           or renamed (another mail)
    contact-form     From is a web form's address       -> the visitor (Reply-To) writes
    delivery-report  a bounce or delay of our mail      -> stored on that mail's ticket
    agent            a verified agent's reply or note   -> commands, relay, notes
    route            the [[routing]] table              -> queue and priority, if it opens one
    customer         everyone else                      -> filed, then AFTER_FILING

The pipeline runs `record_mail` inside its batch transaction (a savepoint per mail);
`record` is the same in a transaction of its own, for `mailtick new`.
"""

from __future__ import annotations

from collections.abc import Callable

import peewee as pw

from mailtick.db import message_id_stored, write_transaction
from mailtick.outcomes import Ignored, Transient
from mailtick.record.agent import record_agent_mail
from mailtick.record.customer import record_customer_mail
from mailtick.record.duplicate import refuse_duplicate
from mailtick.record.form import take_form_visitor
from mailtick.record.intake import Intake, Recorded
from mailtick.record.report import record_report
from mailtick.record.route import choose_route

Step = Callable[[Intake], Recorded | Intake | None]  # None: not mine, the next step's

STEPS: tuple[tuple[str, Step], ...] = (
    ("duplicate", refuse_duplicate),
    ("contact-form", take_form_visitor),
    ("delivery-report", record_report),
    ("agent", record_agent_mail),
    ("route", choose_route),
    ("customer", record_customer_mail),
)


def record_mail(intake: Intake) -> Recorded:
    """Run the steps until one handles the mail; call inside a transaction."""
    for _name, step in STEPS:
        result = step(intake)
        if isinstance(result, Recorded):
            return result
        intake = result or intake
    raise AssertionError("no record step handled the mail; the last one must")


def record(db: pw.Database, intake: Intake) -> Recorded:
    """`record_mail` in a transaction of its own.

    Raises Ignored when the Message-ID is already stored: a refetch or a second delivery;
    Transient on any other constraint error (try again later)."""
    message_id = intake.mail.message_id
    try:
        with write_transaction(db):
            return record_mail(intake)
    except pw.IntegrityError as exc:
        if message_id_stored(message_id):  # another process stored it first
            raise Ignored(f"duplicate Message-ID {message_id} (concurrent)") from exc
        raise Transient(f"database constraint: {exc}") from exc  # not proven a duplicate
