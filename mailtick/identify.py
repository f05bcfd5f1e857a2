"""Stage `identify`: is this mail an agent acting on a ticket, or a customer? Touches nothing.

An agent acts only with BOTH a valid reply token for that agent (in a recipient
plus-address, see security.py) AND a From address of that agent, and only when a
trusted Authentication-Results header does not report a DMARC failure for the
From domain. Anything less is a customer mail; when it claims an agent or carries a
token, the reason is kept so the log and the agents' notification can flag it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailtick.config import AgentConfig
from mailtick.mail import ParsedMail
from mailtick.security import ReplyToken, TokenKind, TokenSigner, dmarc_failed


@dataclass(frozen=True)
class Identity:
    agent: AgentConfig | None  # set only for a verified agent
    token: ReplyToken | None  # the verified token (ticket, kind) of that agent
    warning: str = ""  # why a mail that looks like an agent's is treated as a customer's


@dataclass(frozen=True)
class Desk:
    """The support desk: its address, its agents and the signer of their reply tokens."""

    agents: Sequence[AgentConfig]
    signer: TokenSigner
    support_addr: str
    authserv_id: str

    def addresses(self) -> set[str]:
        return {addr for agent in self.agents for addr in agent.addresses} | {self.support_addr}

    def token_address(self, kind: TokenKind, number: str, agent: str) -> str:
        return self.signer.address(self.support_addr, kind, number, agent)

    def responsible(self, ticket: Any) -> list[AgentConfig]:
        """The ticket's owner while there is one, otherwise every agent of its queue. A queue
        no agent joins falls back to the "default" queue's agents, then to every agent:
        nobody's ticket is nobody's to hear of."""
        owner = self.agent_by_name(ticket.owner) if ticket.owner else None
        if owner is not None:
            return [owner]
        for queue in (ticket.queue, "default"):
            members = [a for a in self.agents if queue in a.queues]
            if members:
                return members
        return list(self.agents)

    def agent_by_address(self, addr: str) -> AgentConfig | None:
        return next((a for a in self.agents if addr in a.addresses), None)

    def agent_by_name(self, name: str) -> AgentConfig | None:
        return next((a for a in self.agents if a.name == name), None)

    def identify(self, mail: ParsedMail) -> Identity:
        claimed = self.agent_by_address(mail.from_addr)
        if mail.from_problem:
            return Identity(None, None, f"ambiguous From: {mail.from_problem}")
        check = self.signer.verify(
            recipients(mail), self.support_addr, [a.name for a in self.agents]
        )
        if check.token is None:
            if claimed is not None:
                return Identity(None, None, f"From claims agent {claimed.name}: {check.reason}")
            if check.present:
                return Identity(None, None, f"carries an invalid reply token ({check.problem})")
            return Identity(None, None)
        owner = self.agent_by_name(check.token.agent)
        if owner is None or claimed is None or claimed.name != owner.name:
            return Identity(
                None,
                None,
                f"carries agent {check.token.agent}'s reply token but From is {mail.from_addr}",
            )
        domain = mail.from_addr.rpartition("@")[2]
        if self.authserv_id and dmarc_failed(
            mail.header_values("Authentication-Results"), self.authserv_id, domain
        ):
            why = f"DMARC failed for agent {owner.name}'s domain {domain}, or judged another From"
            return Identity(None, None, why)
        return Identity(owner, check.token)


def recipients(mail: ParsedMail) -> list[str]:
    """Every address the mail was delivered to: To, Cc and the MTA's delivery headers."""
    delivered = [
        mail.header(name).strip().strip("<>").lower()
        for name in ("Delivered-To", "X-Original-To", "Envelope-To")
    ]
    return [*mail.to, *mail.cc, *(d for d in delivered if "@" in d)]
