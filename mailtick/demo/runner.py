"""Demo: servers, config, daemon up; script played; all down. Loopback, temp dir, terminal.

`play()` is the whole demo and returns a DemoResult; `run_demo()` is `mailtick demo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mailtick.app import Daemon
from mailtick.config import Config, load_config
from mailtick.demo.common import HOST, PREFIX, SUPPORT, WAIT_SECONDS, DemoFailed, Interrupted
from mailtick.demo.guide import announce, keep_running_help, real_mailbox_help
from mailtick.demo.printer import Printer, wants_color
from mailtick.demo.script import SCRIPT, Step
from mailtick.demo.servers import Delivered, servers
from mailtick.demo.session import Demo
from mailtick.demo.workdir import PASSWORD_ENV, SECRET_FILE, config_text, logging_to, write_secret
from mailtick.views import render_ticket

STOP_SECONDS = 40.0  # the daemon itself gives its stages 30 s to finish


@dataclass(frozen=True)
class Plan:
    steps: Sequence[Step] = SCRIPT
    wait_seconds: float = WAIT_SECONDS  # per expectation
    keep_running: bool = False  # after the script, serve until SIGINT/SIGTERM


@dataclass
class DemoResult:
    failure: str | None = None
    interrupted: bool = False  # Ctrl-C (or SIGTERM) stopped the daemon before the script ended
    numbers: dict[str, str] = field(default_factory=dict)  # ticket key -> number
    tickets: list[dict[str, Any]] = field(default_factory=list)  # views.show_ticket, per ticket
    delivered: list[Delivered] = field(default_factory=list)  # every mail the SMTP server got
    seconds: float = 0.0

    @property
    def state(self) -> str:
        return "FAILED" if self.failure else "interrupted" if self.interrupted else "done"

    @property
    def exit_code(self) -> int:
        """0 done, 1 failed, 130 interrupted (as the shell reports a Ctrl-C)."""
        return 1 if self.failure else 130 if self.interrupted else 0


@contextlib.asynccontextmanager
async def daemon_running(
    config: Config,
) -> AsyncIterator[tuple[Daemon, asyncio.Task[Config | None]]]:
    """`mailtick run` as a task of this event loop; stopped (and awaited) on the way out."""
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(), name="mailtick-daemon")
    try:
        yield daemon, task
    finally:
        crash = await stop_daemon(daemon, task)
    if crash is not None:  # reached only when the demo itself went well
        raise DemoFailed(f"the daemon failed: {crash!r}")


async def stop_daemon(daemon: Daemon, task: asyncio.Task[Config | None]) -> BaseException | None:
    """Ask the daemon to stop and wait for it; what it died of, if anything."""
    daemon.request_stop("demo over")
    done, _ = await asyncio.wait([task], timeout=STOP_SECONDS)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return TimeoutError(f"still running {STOP_SECONDS:g} s after request_stop()")
    return None if task.cancelled() else task.exception()


async def play_script(demo: Demo, steps: Sequence[Step], result: DemoResult) -> None:
    printer = demo.printer

    async def logged_in() -> bool | None:
        return True if demo.daemon.watcher.connected.is_set() else None

    await demo.wait_until(logged_in, "the daemon to log in to IMAP")
    printer.verdict(True, f"mailtick run is up: logged in to IMAP as {SUPPORT}, waiting for mail")
    for index, step in enumerate(steps, 1):
        printer.heading(f"{index}/{len(steps)}  {step.title}")
        demo.mark = len(demo.smtp.delivered)
        try:
            await step.action(demo)
            for expectation in step.expect:
                printer.verdict(True, await expectation(demo))
        except DemoFailed as exc:
            printer.verdict(False, str(exc))
            raise DemoFailed(f"step {index} ({step.title}): {exc}") from exc
        finally:
            result.numbers = dict(demo.numbers)


async def show_tickets(demo: Demo, result: DemoResult) -> None:
    printer = demo.printer
    printer.heading("The tickets, as `mailtick show` prints them")
    for number in dict.fromkeys(demo.numbers.values()):
        detail = await demo.ticket(number)
        if detail is None:
            raise DemoFailed(f"ticket {PREFIX}#{number} disappeared")
        result.tickets.append(detail)
        printer.line()
        printer.line(render_ticket(detail, PREFIX))


async def play(
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    keep_running: bool = False,
    steps: Sequence[Step] = SCRIPT,
    wait_seconds: float = WAIT_SECONDS,
) -> DemoResult:
    """Run the demo; the result says what happened (`state`, `failure`, `exit_code`)."""
    plan = Plan(steps, wait_seconds, keep_running)
    printer = Printer(out or sys.stdout, wants_color(out or sys.stdout))
    result = DemoResult()
    with tempfile.TemporaryDirectory(prefix="mailtick-demo-") as tmp:
        root = Path(tmp)
        try:
            with logging_to(root / "mailtick.log", "INFO"):
                await run_in(root, printer, plan, result)
        except DemoFailed as exc:
            result.failure = str(exc)
            report_failure(err or sys.stderr, result.failure, root / "mailtick.log")
        except Interrupted:
            result.interrupted = True
        result.seconds = time.monotonic() - printer.started
        printer.line()
        printer.line(f"mailtick demo {result.state} in {result.seconds:.1f} s; {root} removed.")
    return result


async def run_in(root: Path, printer: Printer, plan: Plan, result: DemoResult) -> None:
    """Servers up, config written, daemon started, script played; all stopped on the way out."""
    password = secrets.token_urlsafe(12)
    printer.line(
        printer.paint(f"mailtick demo: the real daemon, real IMAP and SMTP on {HOST}", "head")
    )
    async with servers(printer, password) as (imap, smtp):
        path = root / "config.toml"
        path.write_text(config_text(imap.port, smtp.port), encoding="utf-8")
        write_secret(root / SECRET_FILE)
        config = load_config(path, env={PASSWORD_ENV: password})
        announce(printer, imap, smtp, root)
        try:
            async with daemon_running(config) as (daemon, task):
                demo = Demo(printer, imap, smtp, daemon, task, plan.wait_seconds)
                await play_script(demo, plan.steps, result)
                await show_tickets(demo, result)
                real_mailbox_help(printer)
                if plan.keep_running:
                    keep_running_help(printer, demo, root)
                    await asyncio.wait([task])  # the daemon's SIGINT/SIGTERM handler ends it
                    printer.line()
        finally:
            result.delivered = list(smtp.delivered)


def report_failure(err: TextIO, failure: str, log_path: Path) -> None:
    print(f"mailtick demo FAILED: {failure}", file=err)
    with contextlib.suppress(OSError):
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        if tail:
            print("last lines of mailtick's log:", file=err)
            print(textwrap.indent("\n".join(tail), "  "), file=err)


def run_demo(keep_running: bool = False) -> int:
    """`mailtick demo`: 0 when every expectation held, 1 when one did not, 130 on Ctrl-C."""
    try:
        return asyncio.run(play(keep_running=keep_running)).exit_code
    except BrokenPipeError:  # `mailtick demo | head`: everything is stopped and removed by now
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
