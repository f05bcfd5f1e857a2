"""Stage `record`, step `route`: where a ticket this mail opens would go (routing.py). Nothing.

Runs for every customer mail; the customer step uses the Route only when the mail
opens a new ticket (a reply stays in its ticket's queue).
"""

from __future__ import annotations

import dataclasses

from mailtick.record.intake import Intake
from mailtick.routing import route


def choose_route(intake: Intake) -> Intake | None:
    """The intake with its Route; None (pass) when there is no routing table."""
    rules = intake.settings.routing
    if not rules:
        return None
    mailbox = intake.raw.mailbox if intake.raw is not None else ""
    return dataclasses.replace(intake, route=route(intake.mail, mailbox, rules))
