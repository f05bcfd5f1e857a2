"""`mailtick demo`: the real daemon plays a scripted conversation on embedded IMAP/SMTP servers.

A customer, and an agent who works entirely by mail: acknowledgement, notification, the
agent's answer relayed from the support address, topic drift split off on "NEU", #close.

The parts, each importing only those above it:
  common   host, addresses, ticket prefix, DemoFailed
  printer  the timeline on the terminal
  servers  pymap (IMAP, in memory) and aiosmtpd (SMTP) on loopback
  people   the customer and the agent, and the mail their clients write
  workdir  the temporary directory: config.toml, reply secret, log file
  session  a running demo: servers, daemon, mail so far, waiting for mailtick
  script   the steps: what people do, what mailtick must then have done
  guide    what the demo explains: where things run, acting as the agent, a real mailbox
  runner   play(): everything up, the script played, everything down; run_demo() for the CLI
"""

from mailtick.demo.common import SUPPORT, WAIT_SECONDS, DemoFailed
from mailtick.demo.people import BEA, BERT, DANA, JOERG, Agent, Customer
from mailtick.demo.printer import wants_color
from mailtick.demo.runner import DemoResult, play, run_demo
from mailtick.demo.script import SCRIPT, Step, acknowledged, writes
from mailtick.demo.servers import Delivered, is_support, local_delivery

__all__ = [
    "BEA",
    "BERT",
    "DANA",
    "JOERG",
    "SCRIPT",
    "SUPPORT",
    "WAIT_SECONDS",
    "Agent",
    "Customer",
    "Delivered",
    "DemoFailed",
    "DemoResult",
    "Step",
    "acknowledged",
    "is_support",
    "local_delivery",
    "play",
    "run_demo",
    "wants_color",
    "writes",
]
