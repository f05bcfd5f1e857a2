"""Crash test: `kill -9` of the daemon at random points while it ingests mail with acknowledgements.

The daemon runs as a real process (`python -m mailtick run`) on a real Dovecot, a real SMTP
sink and the embedded SQLite database. 500 new customer requests and a few replies threading
into them are appended to INBOX: a backlog before the first start (the catch-up path), the
rest a few at a time while the doomed daemons run (the IDLE path). Each daemon is SIGKILLed a
random 0.05-1.5 s after it is up ("mailtick started": database open, language model loaded;
start-up itself takes about a second), or, for one run in five, after the same time counted
from its exec (kills during start-up: schema, IMAP login, CREATE). At least MIN_KILLS kills,
then one more daemon is started and left to drain INBOX and the outbox. Afterwards:

* the incoming Message-IDs in the database are exactly the ones appended,
* one ticket per new request (no duplicates), every reply on its request's ticket,
* INBOX is empty and every appended mail is in Processed exactly once (Dovecot offers MOVE,
  which moves each mail whole or not at all, so a MOVE cut short cannot leave a copy behind),
* every new request got its acknowledgement, and nothing else was sent. A mail the SMTP
  server accepted just before a kill (not yet marked sent) goes out again; such a duplicate
  delivery is allowed only with the identical Message-ID. They are counted and reported.

Run with -s for the report. The seed is printed; MAILTICK_CRASH_SEED=<seed> replays the kill
times (the daemon's own timing still varies).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import REPO, settings, wait_until, write_config
from servers import Dovecot, ImapTestClient, ReceivedMail, SmtpSink, make_mail

NEW_REQUESTS = 500
REPLIES = 20  # follow-ups to earlier requests: threaded, no acknowledgement
BACKLOG = 300  # mails in INBOX before the first start; the rest arrive during the kill runs
TRICKLE_RUNS = 40  # the runs that each get a share of the rest
MIN_KILLS = 50
MAX_KILLS = 60
KILL_PHASE_SECONDS = 150.0  # no new kill after this long once MIN_KILLS are done
LIFETIME = (0.05, 1.5)  # seconds a doomed daemon lives
FROM_EXEC = 0.2  # share of runs whose lifetime counts from exec instead of "mailtick started"
START_TIMEOUT = 20.0
FINISH_SECONDS = 60.0  # the last daemon's time to drain INBOX and the outbox


@dataclass(frozen=True)
class Mail:
    message_id: str
    raw: bytes
    answers: str | None = None  # a reply: the Message-ID of the request it answers


@dataclass
class KillLog:
    seed: int
    kills: int = 0
    during_start_up: int = 0  # killed before "mailtick started"
    gone_before_kill: int = 0  # exited on their own: must stay 0
    busy: int = 0  # runs that recorded or sent something before their kill
    lifetimes: list[float] = field(default_factory=list)


def _mails() -> list[Mail]:
    """NEW_REQUESTS distinct requests, then REPLIES replies (In-Reply-To) to some of them."""
    mails = [
        Mail(
            f"<crash-request-{n}@customer.example>",
            make_mail(
                from_addr=f"Customer {n} <customer{n}@customer.example>",
                subject=f"Invoice {n} shows the wrong amount",
                body=(
                    f"Hello,\n\ninvoice number {n} lists {n + 3} licences, "
                    f"but we only ordered {n + 1}.\nPlease correct it.\n\nRegards,\nCustomer {n}\n"
                ),
                message_id=f"<crash-request-{n}@customer.example>",
            ),
        )
        for n in range(NEW_REQUESTS)
    ]
    for n in range(0, NEW_REQUESTS, NEW_REQUESTS // REPLIES):
        request = mails[n].message_id
        mails.append(
            Mail(
                f"<crash-reply-{n}@customer.example>",
                make_mail(
                    from_addr=f"Customer {n} <customer{n}@customer.example>",
                    subject=f"Re: Invoice {n} shows the wrong amount",
                    body=(
                        f"Hello again,\n\nabout invoice number {n}: we ordered {n + 1} licences, "
                        f"not {n + 3}.\nPlease send a corrected invoice.\n\nCustomer {n}\n"
                    ),
                    message_id=f"<crash-reply-{n}@customer.example>",
                    in_reply_to=request,
                    references=[request],
                ),
                answers=request,
            )
        )
    return mails


@contextlib.contextmanager
def _daemon(config: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`mailtick run -c config` in a process group of its own, started without waiting.
    On leaving, the daemon and whatever of its group a SIGKILL orphaned (parse workers)
    are killed, as systemd does with the cgroup of a crashed service."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailtick", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _started(log_path: Path, proc: subprocess.Popen[bytes]) -> bool:
    return b"mailtick started" in log_path.read_bytes() or proc.poll() is not None


def _kill_repeatedly(
    config: Path, logs: Path, client: ImapTestClient, trickle: list[Mail], seed: int
) -> KillLog:
    rng = random.Random(seed)
    size = -(-len(trickle) // TRICKLE_RUNS)
    shares = [trickle[start : start + size] for start in range(0, len(trickle), size)]  # in order
    record = KillLog(seed)
    deadline = time.monotonic() + KILL_PHASE_SECONDS
    while record.kills < MAX_KILLS and (record.kills < MIN_KILLS or time.monotonic() < deadline):
        lifetime = rng.uniform(*LIFETIME)
        from_exec = rng.random() < FROM_EXEC
        share = shares.pop(0) if shares else []
        append_after = rng.uniform(0, lifetime)
        log_path = logs / f"run-{record.kills + 1:02d}.log"
        with _daemon(config, log_path) as proc:
            if not from_exec:
                wait_until(functools.partial(_started, log_path, proc), START_TIMEOUT)
            born = time.monotonic()
            time.sleep(append_after)
            if share:
                client.append_many([mail.raw for mail in share])
            time.sleep(max(0.0, born + lifetime - time.monotonic()))
            if proc.poll() is not None:
                record.gone_before_kill += 1
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        record.kills += 1
        record.lifetimes.append(lifetime)
        text = log_path.read_text(errors="replace")
        record.during_start_up += "mailtick started" not in text
        record.busy += any(word in text for word in (" new ticket ", " threaded ", " sent <"))
    for share in shares:  # fewer runs than shares: append the rest now
        client.append_many([mail.raw for mail in share])
    return record


def _query(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the daemon's SQLite database without writing to it."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def _count(db_path: Path, sql: str) -> int:
    [(value,)] = _query(db_path, sql)
    assert isinstance(value, int), value
    return value


def _drained(db_path: Path, client: ImapTestClient) -> bool:
    pending = "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
    return client.count("INBOX") == 0 and _count(db_path, pending) == 0


def _finish(config: Path, log_path: Path, db_path: Path, client: ImapTestClient) -> None:
    """One last daemon: wait until INBOX and the outbox are drained, then SIGTERM it."""
    with _daemon(config, log_path) as proc:
        # Up and through one catch-up before anything counts (SIGTERM is handled from here on).
        wait_until(lambda: b"IMAP connected" in log_path.read_bytes(), START_TIMEOUT)
        try:
            wait_until(lambda: _drained(db_path, client), FINISH_SECONDS, step=0.2)
        except AssertionError:
            stuck = _query(
                db_path,
                "SELECT id, attempts, next_attempt_at, claimed_until, last_error FROM outbox"
                " WHERE status = 'pending' ORDER BY id LIMIT 5",
            )
            pending = _count(db_path, "SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
            raise AssertionError(
                f"not drained within {FINISH_SECONDS:g}s (now {time.strftime('%H:%M:%S')}): "
                f"{client.count('INBOX')} mails in INBOX, {pending} outbox rows pending, "
                f"the first: {stuck}; log {log_path}"
            ) from None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-3000:]


def _in_reply_to(mail: ReceivedMail) -> str:
    return str(mail.message["In-Reply-To"] or "").strip()


def _message_id(mail: ReceivedMail) -> str:
    return str(mail.message["Message-ID"] or "").strip()


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    dovecot: Dovecot, imap_client: ImapTestClient, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    seed = int(os.environ.get("MAILTICK_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\ncrash test seed {seed} (replay the kill times: MAILTICK_CRASH_SEED={seed})")
    mails = _mails()
    requests = [mail.message_id for mail in mails if mail.answers is None]
    replies = {mail.message_id: mail.answers for mail in mails if mail.answers is not None}
    imap_client.append_many([mail.raw for mail in mails[:BACKLOG]])
    db_path = tmp_path / "mailtick.db"
    data = settings(dovecot, smtp_sink, f"sqlite:///{db_path}", drift={"action": "off"})
    config = write_config(tmp_path / "config.toml", data)
    logs = tmp_path / "logs"
    logs.mkdir()

    began = time.monotonic()
    record = _kill_repeatedly(config, logs, imap_client, mails[BACKLOG:], seed)
    kill_seconds = time.monotonic() - began
    left_in_inbox = imap_client.count("INBOX")
    delivered_before = len(smtp_sink.messages)
    _finish(config, logs / "final.log", db_path, imap_client)
    assert record.kills >= MIN_KILLS
    assert record.gone_before_kill == 0  # no daemon died on its own

    # -- the database: every mail once, one ticket per request, one ack each -------------
    incoming = _query(db_path, "SELECT message_id, ticket_id FROM message WHERE direction = 'in'")
    ticket_of = {str(mid): ticket for mid, ticket in incoming}
    assert len(incoming) == len(ticket_of)  # (message_id is UNIQUE anyway)
    assert set(ticket_of) == {mail.message_id for mail in mails}
    tickets = _count(db_path, "SELECT COUNT(*) FROM ticket")
    assert tickets == NEW_REQUESTS
    assert len({ticket_of[mid] for mid in requests}) == NEW_REQUESTS
    for reply, request in replies.items():
        assert ticket_of[reply] == ticket_of[request], reply
    assert _count(db_path, "SELECT COUNT(*) FROM quarantine") == 0
    outbox = Counter(str(status) for (status,) in _query(db_path, "SELECT status FROM outbox"))
    assert outbox == {"sent": NEW_REQUESTS}, outbox

    # -- the mail server: nothing left behind, nothing removed without its ticket --------
    assert imap_client.count("INBOX") == 0
    assert imap_client.count("Quarantine") == 0
    processed = Counter(imap_client.message_ids("Processed"))
    assert set(processed) == set(ticket_of)
    moved_twice = {mid: n for mid, n in processed.items() if n > 1}
    assert not moved_twice, moved_twice

    # -- the acknowledgements: every request's, resends only as the identical mail -------
    deliveries: dict[str, list[ReceivedMail]] = {}
    for mail in smtp_sink.messages:
        deliveries.setdefault(_in_reply_to(mail), []).append(mail)
    assert set(deliveries) == set(requests)  # none missing, none for a reply or anything else
    duplicates = {request: sent for request, sent in deliveries.items() if len(sent) > 1}
    for request, sent in sorted(duplicates.items()):
        ids = [_message_id(mail) for mail in sent]
        print(f"  duplicate delivery: {len(sent)}x the ack of {request}, Message-ID {ids[0]}")
        assert ids == [ids[0]] * len(ids), (request, ids)
    extra = sum(len(sent) - 1 for sent in duplicates.values())

    print(
        f"crash test (seed {seed}): {record.kills} kills in {kill_seconds:.0f}s, "
        f"{record.during_start_up} during start-up, {record.busy} with mail being recorded "
        f"or sent; {len(mails)} mails ({NEW_REQUESTS} requests, {REPLIES} replies), "
        f"{left_in_inbox} still in INBOX and {delivered_before} deliveries after the kills; "
        f"{tickets} tickets, {sum(processed.values())} mails in Processed, "
        f"{len(deliveries)} requests acknowledged, {len(smtp_sink.messages)} deliveries, "
        f"{extra} duplicate deliveries ({len(duplicates)} acks)"
    )
