"""Instances benchmark: two `mailtick run` daemons on one PostgreSQL database vs one, for a
sending-heavy load (every mail a new request with an acknowledgement to send).

Per round, for 1 and then 2 instances, on a fresh Dovecot mailbox and a fresh database: the
daemons start and idle, N requests are appended at once, and the clock runs until the SMTP
server has every acknowledgement. The SMTP server (aiosmtpd, in a process of its own)
answers each mail after `--smtp-delay` seconds, as a remote MTA's queue write and round
trip do; that is what makes the load sending-heavy. One instance leads the mailbox and
ingests; every instance sends (the outbox is claimed row by row). Printed: mails/s of each,
and the ratio two/one measured in the same round; with --repeat, the median ratio.

    .venv/bin/python bench/instances.py                # N=300, 20 ms SMTP answers, 1 round
    .venv/bin/python bench/instances.py --n 500 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test servers and harness, as the tests use them

from harness import settings, spawn_daemon, wait_until, write_config  # noqa: E402
from servers import Dovecot, SmtpSink, make_mail, postgres_database, stop_process  # noqa: E402

TIMEOUT = 300.0  # seconds for one measured phase


class SlowSink:
    """An SMTP server in a process of its own that answers each DATA after `delay` seconds
    (other sessions go on meanwhile, as with a real MTA). `count()` asks how many it has."""

    def __init__(self, delay: float) -> None:
        context = mp.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, delay), daemon=True)
        self.host = "127.0.0.1"
        self.port = 0

    def __enter__(self) -> SlowSink:
        self._process.start()
        if not self._pipe.poll(30):
            raise RuntimeError("the SMTP sink process did not start")
        self.port = int(self._pipe.recv())
        return self

    def count(self) -> int:
        self._pipe.send("count")
        return int(self._pipe.recv())

    def __exit__(self, *exc: object) -> None:
        self._pipe.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(pipe: Any, delay: float) -> None:
    with SmtpSink() as sink:
        original = sink._on_data

        async def slow_data(server: Any, session: Any, envelope: Any) -> str:
            await asyncio.sleep(delay)
            return original(session, envelope)

        assert sink._controller is not None
        sink._controller.handler.handle_DATA = slow_data
        pipe.send(sink.port)
        while (command := pipe.recv()) != "stop":
            assert command == "count"
            pipe.send(len(sink.messages))


def one_phase(instances: int, n: int, delay: float, work: Path) -> float:
    """mails/s with `instances` daemons: from the APPEND of n requests to the last ack."""
    with Dovecot() as dovecot, SlowSink(delay) as sink, postgres_database("mt_bench") as url:
        data = settings(dovecot, sink, url, drift={"action": "off"})  # type: ignore[arg-type]
        config = write_config(work / f"config-{instances}.toml", data)
        logs = [work / f"daemon-{instances}-{k}.log" for k in range(instances)]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs = [spawn_daemon(config, path) for path in logs]
            wait_until(lambda: any(b"IMAP connected" in p.read_bytes() for p in logs), 60)
            wait_until(lambda: all(b"mailtick started" in p.read_bytes() for p in logs), 60)
            mails = [
                make_mail(from_addr=f"c{k}@customer.example", subject=f"Printer {k} broken")
                for k in range(n)
            ]
            with dovecot.client() as client:
                began = time.monotonic()
                client.append_many(mails)
            wait_until(lambda: sink.count() >= n, TIMEOUT, step=0.02)
            seconds = time.monotonic() - began
        finally:
            for proc in procs:
                stop_process(proc)
        return n / seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="requests per phase (default 300)")
    parser.add_argument("--smtp-delay", type=float, default=0.02, help="seconds (default 0.02)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median ratio")
    args = parser.parse_args(argv)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mailtick-bench-") as tmp:
        for round_number in range(1, args.repeat + 1):
            one = one_phase(1, args.n, args.smtp_delay, Path(tmp))
            two = one_phase(2, args.n, args.smtp_delay, Path(tmp))
            ratios.append(two / one)
            print(
                f"round {round_number}: {args.n} requests, SMTP answers in "
                f"{args.smtp_delay * 1000:.0f} ms, PostgreSQL: 1 instance {one:.1f} mails/s, "
                f"2 instances {two:.1f} mails/s, ratio {two / one:.2f}",
                flush=True,
            )
    print(f"ratio two/one instances (median of {len(ratios)}): {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
