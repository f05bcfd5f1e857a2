"""Ingest benchmark: `mailtick run --once` vs raw IMAP fetch+parse, and APPEND-to-ack latency."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.policy
import email.utils
import logging
import multiprocessing as mp
import quopri
import random
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: mailtick
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test servers

from servers import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    Dovecot,
    SmtpSink,
    make_mail,
    parse_mail,
    postgres_database,
)

from mailtick.app import Daemon, OnceResult
from mailtick.caps import subject_key
from mailtick.config import Config, ImapConfig, LimitsConfig, TicketsConfig, parse_config
from mailtick.db import Message, Outbox, Quarantine, Ticket, open_database
from mailtick.ingest.imap import ImapConnection
from mailtick.ingest.parse import parse
from mailtick.threading.subject import with_tag

T = TypeVar("T")

SUPPORT = "Example Support <support@example.com>"
THROUGHPUT_TARGET = 0.5  # mailtick at half the raw rate or better
LATENCY_TARGET = 1.0  # seconds, median APPEND -> acknowledgement
LATENCY_SAMPLE_TIMEOUT = 10.0
LATENCY_POLL = 0.005
LATENCY_GAP = 0.3  # pause after each sample so the daemon is back in IDLE
IDLE_WAIT = 30.0  # the daemon must have caught up and be idling within this
IDLE_SETTLE = 0.1  # from sending IDLE to the server's "+ idling"
PROBE_MAILBOX = "BenchIdleProbe"

# ---------------------------------------------------------------------------------------------
# Corpus: text tables
# ---------------------------------------------------------------------------------------------

Texts = tuple[tuple[str, ...], tuple[str, ...]]  # (subjects, paragraphs)

TOPICS: dict[str, dict[str, Texts]] = {
    "hosting": {
        "de": (
            (
                "Webseite {domain} nicht erreichbar",
                "Server antwortet seit gestern sehr langsam",
                "Fehler {http} auf unserer Homepage",
                "SSL-Zertifikat für {domain} abgelaufen",
            ),
            (
                "seit heute Morgen gegen {time} Uhr ist unsere Webseite {domain} nicht mehr "
                'erreichbar. Im Browser erscheint nur die Meldung "{http} Service Unavailable".',
                "Wir haben bereits den Browser-Cache geleert und es von verschiedenen Rechnern "
                "aus versucht, auch über das Mobilnetz. Das Problem besteht überall.",
                "Das betrifft leider auch unseren Online-Shop, Kunden können seit Stunden keine "
                "Bestellungen aufgeben. Bitte behandeln Sie die Sache dringend.",
                "Gestern Abend hat unsere Agentur ein Update auf dem Server {host} eingespielt. "
                "Ob das damit zusammenhängt, wissen wir nicht.",
                "Können Sie bitte in den Server-Logs nachsehen, was da los ist, und uns Bescheid "
                "geben, bis wann das behoben ist?",
            ),
        ),
        "en": (
            (
                "Website {domain} is down",
                "Server extremely slow since yesterday",
                "Error {http} on our home page",
                "SSL certificate for {domain} expired",
            ),
            (
                "since about {time} this morning our website {domain} cannot be reached. The "
                'browser only shows "{http} Service Unavailable".',
                "We cleared the browser cache and tried from several machines and from a mobile "
                "connection. The problem is the same everywhere.",
                "Our web shop is affected as well, customers have not been able to place orders "
                "for hours. Please treat this as urgent.",
                "Our agency deployed an update to the server {host} last night. We do not know "
                "whether that is related.",
                "Could you please check the server logs and let us know when this will be fixed?",
            ),
        ),
    },
    "mail": {
        "de": (
            (
                "E-Mails an {domain} kommen nicht an",
                "Unsere Mails landen beim Empfänger im Spam",
                "Postfach {user}@{domain} ist voll",
                "Fehlermeldung beim Versand: {smtp}",
            ),
            (
                "seit {date} kommen E-Mails von externen Absendern bei uns nicht mehr an. Intern "
                "funktioniert der Versand, nur von außen kommt nichts.",
                'Beim Versand an Kunden bekommen wir die Fehlermeldung "{smtp}" zurück. Das '
                "passiert nicht bei allen Empfängern, aber bei sehr vielen.",
                "Ein Geschäftspartner meint, unsere Nachrichten landen bei ihm immer im "
                "Spam-Ordner. Ist bei unserer Domain {domain} etwas mit SPF oder DKIM nicht "
                "in Ordnung?",
                "Das Postfach von {name_first} hat angeblich die Größe von {n} GB überschritten. "
                "Können Sie das Kontingent erhöhen oder alte Mails archivieren?",
                "Wir nutzen Outlook auf den Arbeitsplätzen und die Mail-App auf den Handys, "
                "das Problem tritt auf beiden auf.",
            ),
        ),
        "en": (
            (
                "Emails to {domain} are not arriving",
                "Our mail ends up in the recipients' spam folder",
                "Mailbox {user}@{domain} is full",
                "Error when sending: {smtp}",
            ),
            (
                "since {date} mail from outside senders no longer reaches us. Internal mail "
                "works fine, only external mail is missing.",
                'When we write to customers we get "{smtp}" back. Not for every recipient, but '
                "for a great many.",
                "A business partner tells us that our messages always land in his spam folder. "
                "Is something wrong with SPF or DKIM for {domain}?",
                "The mailbox of {name_first} is said to be over its {n} GB quota. Can you raise "
                "the quota or archive old mail?",
                "We use Outlook on the desktops and the mail app on our phones; both are affected.",
            ),
        ),
    },
    "cms": {
        "de": (
            (
                "Login ins CMS funktioniert nicht",
                "Bilder lassen sich im Redaktionssystem nicht hochladen",
                "Seite nach dem Update zerschossen",
                "Neue Unterseite für {product} anlegen",
            ),
            (
                "wenn ich mich im Redaktionssystem anmelden will, lädt die Seite endlos und am "
                "Ende kommt ein weißer Bildschirm.",
                "Beim Hochladen von Bildern über {n} MB erscheint die Meldung "
                '"Upload fehlgeschlagen". Kleinere Bilder gehen.',
                "Nach dem Update von letzter Woche ist das Layout der Startseite verrutscht, die "
                "Navigation liegt über dem Inhalt.",
                "Wir bräuchten für unser neues Produkt {product} eine eigene Unterseite im "
                "gleichen Stil wie die bestehenden Produktseiten.",
                "Die Texte und Bilder würde unsere Marketingabteilung liefern. Was würde das "
                "ungefähr kosten und wie lange dauert es?",
            ),
        ),
        "en": (
            (
                "Cannot log in to the CMS",
                "Image upload fails in the editor",
                "Page layout broken after the update",
                "New page for {product}",
            ),
            (
                "when I try to log in to the CMS the page keeps loading and then shows a blank "
                "white screen.",
                'Uploading images larger than {n} MB fails with "Upload failed". Smaller images '
                "work.",
                "Since last week's update the layout of the home page is broken: the navigation "
                "covers the content.",
                "We need a page for our new product {product}, in the same style as the existing "
                "product pages.",
                "Our marketing team would provide the texts and images. What would this cost "
                "and how long would it take?",
            ),
        ),
    },
    "billing": {
        "de": (
            (
                "Rechnung {invoice} doppelt abgebucht",
                "Frage zur Rechnung {invoice}",
                "Änderung unserer Bankverbindung",
                "Mahnung erhalten, obwohl bezahlt",
            ),
            (
                "die Rechnung {invoice} über {amount} wurde zweimal von unserem Konto "
                "abgebucht. Bitte erstatten Sie den doppelten Betrag.",
                "Auf der Rechnung {invoice} ist eine Position aufgeführt, die wir nicht "
                "zuordnen können. Können Sie uns erklären, wofür diese berechnet wurde?",
                "Ab dem {date} hat unsere Firma eine neue Bankverbindung. Bitte ändern Sie das "
                "SEPA-Lastschriftmandat entsprechend.",
                "Heute haben wir eine Mahnung für {invoice} bekommen, obwohl der Betrag von "
                "{amount} am {date} überwiesen wurde. Der Zahlungsbeleg liegt bei.",
                "Bitte schicken Sie die Rechnungen künftig an buchhaltung@{domain}.",
            ),
        ),
        "en": (
            (
                "Invoice {invoice} charged twice",
                "Question about invoice {invoice}",
                "Change of our bank details",
                "Payment reminder although paid",
            ),
            (
                "invoice {invoice} for {amount} has been debited from our account twice. "
                "Please refund the duplicate payment.",
                "Invoice {invoice} lists an item we cannot place. Could you explain what it "
                "was charged for?",
                "From {date} our company has new bank details. Please update the direct debit "
                "mandate accordingly.",
                "We received a reminder for {invoice} today although the {amount} were "
                "transferred on {date}. The payment confirmation is attached.",
                "Please send future invoices to accounts@{domain}.",
            ),
        ),
    },
    "accounts": {
        "de": (
            (
                "Neuer Mitarbeiter braucht Zugang",
                "Passwort vergessen",
                "Benutzerkonto von {name_first} sperren",
                "Zwei-Faktor-Anmeldung einrichten",
            ),
            (
                "ab dem {date} fängt bei uns {name_first} an. Bitte legen Sie ein Benutzerkonto "
                "mit E-Mail-Adresse und Zugang zum Kundenportal an.",
                "ich habe mein Passwort vergessen und die Funktion zum Zurücksetzen schickt mir "
                "keine Mail. Mein Benutzername ist {user}.",
                "{name_first} hat das Unternehmen verlassen. Bitte sperren Sie das Konto {user} "
                "zum Monatsende und leiten Sie die Mails an mich weiter.",
                "Wir möchten für alle Konten die Anmeldung mit zweitem Faktor einführen. Welche "
                "Apps werden unterstützt?",
                "Bitte bestätigen Sie kurz, wenn alles erledigt ist.",
            ),
        ),
        "en": (
            (
                "Access for a new colleague",
                "Forgot my password",
                "Please disable the account of {name_first}",
                "Setting up two-factor login",
            ),
            (
                "{name_first} starts with us on {date}. Please create an account with an email "
                "address and access to the customer portal.",
                "I forgot my password and the reset link never arrives. My user name is {user}.",
                "{name_first} has left the company. Please disable the account {user} at the "
                "end of the month and forward the mail to me.",
                "We would like to require a second factor for all accounts. Which apps are "
                "supported?",
                "Please confirm briefly once everything is done.",
            ),
        ),
    },
    "wifi": {
        "de": (
            (
                "WLAN im {room} fällt ständig aus",
                "Passwort für das Gäste-WLAN",
                "Kein Internet im Besprechungsraum",
                "WLAN {ssid} sehr langsam",
            ),
            (
                "das WLAN {ssid} im {room} bricht seit ein paar Tagen alle paar Minuten ab. "
                "Die Laptops verbinden sich dann neu und Videokonferenzen hängen.",
                "Wir erwarten am {date} Besucher. Wie lautet das aktuelle Passwort für das "
                "Gäste-WLAN, und kann man es für einen Tag ändern?",
                "Im Besprechungsraum haben wir zwar Empfang, aber keine Internetverbindung. Der "
                "Access Point blinkt orange.",
                "Die Übertragungsrate liegt bei nur {n} Mbit/s, früher waren es über 100.",
                "Können Sie sich das per Fernwartung anschauen oder muss jemand vorbeikommen?",
            ),
        ),
        "en": (
            (
                "Wi-Fi on the {room} keeps dropping",
                "Guest Wi-Fi password",
                "No internet in the meeting room",
                "Wi-Fi {ssid} very slow",
            ),
            (
                "the Wi-Fi {ssid} on the {room} has been dropping every few minutes for some "
                "days. Laptops reconnect and video calls freeze.",
                "We expect visitors on {date}. What is the current guest Wi-Fi password, and "
                "can it be changed for a single day?",
                "In the meeting room there is signal but no internet connection. The access "
                "point is blinking orange.",
                "Throughput is down to {n} Mbit/s, it used to be over 100.",
                "Can you look at this remotely or does someone need to come over?",
            ),
        ),
    },
    "press": {
        "de": (
            (
                "Pressemitteilung: {product} ab sofort verfügbar",
                "Presseanfrage zu {product}",
                "Bitte um Veröffentlichung unserer Pressemitteilung",
                "Korrektur der Pressemitteilung vom {date}",
            ),
            (
                "{company} stellt heute {product} vor. Die neue Lösung richtet sich an "
                "mittelständische Unternehmen, die ihre Abläufe digitalisieren möchten.",
                '"Mit {product} schließen wir eine Lücke im Markt", sagt {name_first}, '
                "Geschäftsführer von {company}. Erste Pilotkunden setzen das System bereits ein.",
                "{product} ist ab dem {date} zu Preisen ab {amount} pro Monat erhältlich. Eine "
                "kostenlose Testphase von 30 Tagen ist möglich.",
                "Wir bitten um Veröffentlichung der Pressemitteilung im Newsbereich Ihrer "
                "Webseite. Bildmaterial senden wir gerne auf Anfrage.",
                "In der Pressemitteilung vom {date} hat sich leider ein Fehler eingeschlichen: "
                "der Preis beträgt {amount}, nicht wie angegeben. Bitte korrigieren Sie das.",
            ),
        ),
        "en": (
            (
                "Press release: {product} available now",
                "Press inquiry about {product}",
                "Please publish our press release",
                "Correction to the press release of {date}",
            ),
            (
                "{company} today introduces {product}. The new solution is aimed at mid-sized "
                "businesses that want to digitise their processes.",
                '"{product} fills a gap in the market," says {name_first}, managing director of '
                "{company}. First pilot customers already use the system.",
                "{product} is available from {date} at prices starting at {amount} per month. "
                "A free 30-day trial is offered.",
                "Please publish the press release in the news section of your website. We are "
                "happy to send images on request.",
                "The press release of {date} contained a mistake: the price is {amount}, not as "
                "stated. Please correct it.",
            ),
        ),
    },
}

REPLY_LINES: dict[str, tuple[str, ...]] = {
    "de": (
        "vielen Dank für die schnelle Rückmeldung.",
        "das Problem besteht leider weiterhin, auch nach einem Neustart.",
        "anbei noch weitere Informationen zu dem Fehler.",
        "gibt es hierzu schon etwas Neues? Wir warten dringend auf eine Lösung.",
        "ich habe es gerade noch einmal probiert, jetzt funktioniert es wieder. Danke!",
        "kurze Ergänzung: betroffen sind auch die Kollegen in der Filiale in {city}.",
        "können Sie mich bitte unter {phone} zurückrufen?",
    ),
    "en": (
        "thanks for getting back to us so quickly.",
        "unfortunately the problem is still there, even after a restart.",
        "here is some more information about the error.",
        "is there any news on this? We urgently need a solution.",
        "I just tried again and now it works. Thanks!",
        "one more thing: the colleagues in our {city} office are affected too.",
        "could you please call me back on {phone}?",
    ),
}

GREETINGS = {
    "de": ("Hallo,", "Guten Tag,", "Sehr geehrte Damen und Herren,", "Hallo Support-Team,"),
    "en": ("Hi,", "Hello,", "Dear support team,", "Good morning,"),
}
CLOSINGS = {
    "de": ("Viele Grüße", "Mit freundlichen Grüßen", "Beste Grüße"),
    "en": ("Best regards", "Kind regards", "Thanks,"),
}
REPLY_PREFIX = {"de": ("AW:", "Re:", "AW: AW:"), "en": ("Re:", "RE:", "Re: Re:")}
AUTO_PREFIX = {
    "de": ("Abwesenheitsnotiz:", "Automatische Antwort:"),
    "en": ("Out of Office:", "Automatic reply:"),
}
AUTO_BODY = {
    "de": (
        "Vielen Dank für Ihre Nachricht. Ich bin bis einschließlich {date} nicht im Büro und "
        "habe nur eingeschränkt Zugriff auf meine E-Mails.\n\nIn dringenden Fällen wenden Sie "
        "sich bitte an {colleague}.\n\n{closing}\n{name}\n"
    ),
    "en": (
        "Thank you for your message. I am out of the office until {date} with limited access "
        "to email.\n\nFor urgent matters please contact {colleague}.\n\n{closing}\n{name}\n"
    ),
}
QUOTE_INTRO = {"de": "Am {date} schrieb {name}:", "en": "On {date}, {name} wrote:"}

FIRST_NAMES = {
    "de": ("Jürgen", "Sabine", "Günther", "Käthe", "Stefan", "Anja", "Björn", "Maria", "Uwe"),
    "en": ("James", "Emily", "Oliver", "Sophie", "Daniel", "Grace", "Thomas", "Hannah", "Ryan"),
}
LAST_NAMES = {
    "de": ("Müller", "Schröder", "Weiß", "Becker", "Hoffmann", "Schäfer", "Krüger", "Wagner"),
    "en": ("Smith", "Taylor", "Brown", "Wilson", "Evans", "Walker", "Wright", "Hughes"),
}
COMPANIES = {
    "de": ("Bäckerei Sonnenschein", "Autohaus Nord", "Praxis am Markt", "Stadtwerke Talheim"),
    "en": ("Harbour Logistics", "Greenleaf Studio", "Northwind Traders", "Bluebell Dental"),
}
CITIES = {"de": ("München", "Köln", "Lüneburg", "Düsseldorf"), "en": ("Leeds", "Bristol", "York")}
ROOMS = {"de": ("2. OG", "Erdgeschoss", "Lager"), "en": ("second floor", "ground floor")}
ATTACHMENT_NAMES = {
    "pdf": ("rechnung.pdf", "zahlungsbeleg.pdf", "invoice.pdf", "report.pdf", "angebot.pdf"),
    "png": ("screenshot.png", "fehlermeldung.png", "error.png", "bildschirmfoto.png"),
}
ATTACHMENT_TYPES = {"pdf": "application/pdf", "png": "image/png"}

# kind -> share of the corpus; replies and auto-replies thread into earlier generated mail
KIND_WEIGHTS = {
    "new": 50,  # a new customer request: its own ticket and an acknowledgement (maybe held)
    "reply": 22,  # In-Reply-To (+ References) names an earlier generated mail
    "reply-refs": 10,  # References only
    "auto-reply": 8,  # out-of-office to our (unknown) ack; References holds the customer's mail
    "auto-reply-loose": 4,  # out-of-office without any known reference: its own ticket, no ack
    "bounce": 6,  # multipart/report from MAILER-DAEMON about no mail of ours: ignored
}
THREAD_RULE = {  # how each stored kind joins its ticket (Message.thread_rule)
    "new": "new",
    "reply": "in-reply-to",
    "reply-refs": "references",
    "auto-reply": "references",
    "auto-reply-loose": "new",
}
# Kinds mailtick ignores: moved to Processed, never stored, no ticket. A bounce names the
# Message-ID of the mail it returns, and mailtick only records reports about its own sent
# mail (record/report.py). The acknowledgements' Message-IDs are made by mailtick at run time, so
# a corpus built ahead cannot bounce a real one: its bounces are backscatter (an invented
# .MT@example.com Message-ID), which mailtick must ignore.
IGNORED_KINDS = frozenset({"bounce"})
HTML_ONLY_SHARE = 0.05
ATTACHMENT_SHARE = {"new": 0.10, "reply": 0.06, "reply-refs": 0.06}
GERMAN_SHARE = 0.55
CUSTOMERS = 150
RECENT_THREADS = 300  # replies go to one of the most recent threads

# ---------------------------------------------------------------------------------------------
# Corpus: generation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    name: str
    first: str
    address: str
    company: str
    domain: str
    language: str

    @property
    def header(self) -> str:
        return f"{self.name} <{self.address}>"


@dataclass
class Thread:
    root: str  # Message-ID of the request that opened the ticket
    customer: Customer
    subject: str
    ids: list[str]  # every generated Message-ID on it, oldest first
    last_text: str


@dataclass(frozen=True)
class BenchMail:
    kind: str  # a KIND_WEIGHTS key
    message_id: str
    raw: bytes
    root: str | None  # the request whose ticket this mail must join; None: a ticket of its own
    language: str
    html_only: bool = False
    attachment: str = ""  # "pdf" | "png" | ""
    attachment_bytes: int = 0
    sender: str = ""  # the customer's address (customer mail only)
    subject: str = ""

    @property
    def acknowledged(self) -> bool:
        """mailtick queues an acknowledgement for it (sent, or held by the send caps)."""
        return self.kind == "new"

    @property
    def stored(self) -> bool:
        return self.kind not in IGNORED_KINDS

    @property
    def opens_ticket(self) -> bool:
        return self.root is None and self.stored


def _ascii(text: str) -> str:
    table = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", " ": "-", ".": ""})
    return text.lower().translate(table).encode("ascii", "ignore").decode()


def make_customers(rng: random.Random, count: int) -> list[Customer]:
    customers = []
    for _ in range(count):
        lang = "de" if rng.random() < GERMAN_SHARE else "en"
        first, last = rng.choice(FIRST_NAMES[lang]), rng.choice(LAST_NAMES[lang])
        company = rng.choice(COMPANIES[lang])
        domain = f"{_ascii(company)}.{'de' if lang == 'de' else 'example'}"
        address = f"{_ascii(first)}.{_ascii(last)}{rng.randint(1, 99)}@{domain}"
        customers.append(Customer(f"{first} {last}", first, address, company, domain, lang))
    return customers


def _values(rng: random.Random, customer: Customer, when: datetime) -> dict[str, str]:
    lang = customer.language
    day = (when + timedelta(days=rng.randint(-20, 20))).date()
    return {
        "domain": customer.domain,
        "host": f"web{rng.randint(1, 40)}.hosting.example",
        "http": str(rng.choice((500, 502, 503, 504))),
        "smtp": rng.choice(("550 5.1.1 User unknown", "554 5.7.1 Relay access denied")),
        "time": f"{rng.randint(6, 11)}:{rng.choice(('00', '15', '30', '45'))}",
        "date": day.strftime("%d.%m.%Y") if lang == "de" else day.strftime("%B %d, %Y"),
        "user": _ascii(customer.first),
        "name_first": customer.first,
        "company": customer.company,
        "invoice": f"RE-{when.year}-{rng.randint(10000, 99999)}",
        "amount": f"{rng.randint(9, 2400)},{rng.randint(0, 99):02d} EUR",
        "product": f"{customer.company.split()[0]} Cloud {rng.randint(2, 9)}",
        "room": rng.choice(ROOMS[lang]),
        "ssid": f"{_ascii(customer.company.split()[0])}-office",
        "n": str(rng.randint(2, 50)),
        "city": rng.choice(CITIES[lang]),
        "phone": f"+49 {rng.randint(30, 899)} {rng.randint(100000, 9999999)}",
    }


def _signed(rng: random.Random, customer: Customer, paragraphs: Sequence[str]) -> str:
    lang = customer.language
    body = "\n\n".join([rng.choice(GREETINGS[lang]), *paragraphs])
    return f"{body}\n\n{rng.choice(CLOSINGS[lang])}\n{customer.name}\n{customer.company}\n"


def _quote(text: str, lang: str, name: str, when: datetime) -> str:
    intro = QUOTE_INTRO[lang].format(date=email.utils.format_datetime(when), name=name)
    return intro + "\n" + "\n".join(f"> {line}".rstrip() for line in text.splitlines()) + "\n"


def _html(text: str) -> str:
    paragraphs = "".join(
        f"<p>{p.replace(chr(10), '<br>')}</p>\n" for p in text.split("\n\n") if p.strip()
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        f'<body style="font-family: Arial, sans-serif">\n{paragraphs}</body></html>\n'
    )


def png_bytes(rng: random.Random, size: int) -> bytes:
    """A valid PNG of random pixels: about `size` bytes (noise does not compress)."""
    width = 256
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(max(1, size // 769)))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, max(1, size // 769), 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(rows, 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def pdf_bytes(rng: random.Random, size: int) -> bytes:
    """PDF-looking binary: a PDF header and trailer around a random stream."""
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Length " + str(size).encode() + b" >>\n"
    return head + b"stream\n" + rng.randbytes(size) + b"\nendstream\nendobj\n%%EOF\n"


def encoded(text: str) -> str:
    """A header value, RFC 2047-encoded when it is not ASCII."""
    return text if text.isascii() else Header(text, "utf-8").encode()


@contextlib.contextmanager
def pinned_global_random(seed: str) -> Iterator[None]:
    """The email package draws MIME boundaries from the global `random`: seed it, then restore."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


class CorpusBuilder:
    """Deterministic for a seed: the same N mails, byte for byte, every time."""

    def __init__(self, seed: int, tag: str = "bench") -> None:
        self.rng = random.Random(seed)
        self.seed, self.tag = seed, tag
        self.customers = make_customers(self.rng, CUSTOMERS)
        self.threads: list[Thread] = []
        self.clock = datetime(2024, 11, 4, 7, 30, tzinfo=UTC)
        self.serial = 0

    def build(self, n: int) -> list[BenchMail]:
        kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
        mails = []
        for _ in range(n):
            kind = self.rng.choices(kinds, weights)[0] if self.threads else "new"
            mails.append(self.one(kind))
        return mails

    def one(self, kind: str) -> BenchMail:
        self.serial += 1
        self.clock += timedelta(seconds=self.rng.randint(5, 600))
        with pinned_global_random(f"{self.seed}.{self.serial}"):
            return self._make(kind)

    def _make(self, kind: str) -> BenchMail:
        makers: dict[str, Callable[[str], BenchMail]] = {
            "new": self.new_request,
            "reply": self.reply,
            "reply-refs": self.reply,
            "auto-reply": self.auto_reply,
            "auto-reply-loose": self.auto_reply,
            "bounce": self.bounce,
        }
        return makers[kind](kind)

    def message_id(self, domain: str) -> str:
        return f"<{self.tag}.{self.seed}.{self.serial:06d}.{self.rng.randbytes(4).hex()}@{domain}>"

    def _attachment(self, kind: str) -> tuple[str, bytes]:
        if self.rng.random() >= ATTACHMENT_SHARE.get(kind, 0.0):
            return "", b""
        size = self.rng.randint(50_000, 200_000)
        if self.rng.random() < 0.5:
            return "pdf", pdf_bytes(self.rng, size)
        return "png", png_bytes(self.rng, size)

    def _customer_mail(
        self, kind: str, customer: Customer, subject: str, text: str, **threading: Any
    ) -> BenchMail:
        mid = self.message_id(customer.domain)
        html_only = self.rng.random() < HTML_ONLY_SHARE
        attachment, data = self._attachment(kind)
        files = []
        if attachment:
            name = self.rng.choice(ATTACHMENT_NAMES[attachment])
            files.append((name, ATTACHMENT_TYPES[attachment], data))
        raw = build_mail(
            customer=customer,
            subject=subject,
            text=text,
            message_id=mid,
            date=self.clock,
            html_only=html_only,
            attachments=files,
            **threading,
        )
        root = threading.get("root")
        lang = customer.language
        return BenchMail(
            kind, mid, raw, root, lang, html_only, attachment, len(data), customer.address, subject
        )

    def new_request(self, kind: str) -> BenchMail:
        customer = self.rng.choice(self.customers)
        lang = customer.language
        subjects, paragraphs = TOPICS[self.rng.choice(list(TOPICS))][lang]
        values = _values(self.rng, customer, self.clock)
        chosen = self.rng.sample(paragraphs, self.rng.randint(2, len(paragraphs)))
        subject = self.rng.choice(subjects).format(**values)
        text = _signed(self.rng, customer, [p.format(**values) for p in chosen])
        mail = self._customer_mail(kind, customer, subject, text)
        self.threads.append(Thread(mail.message_id, customer, subject, [mail.message_id], text))
        return mail

    def reply(self, kind: str) -> BenchMail:
        thread = self.rng.choice(self.threads[-RECENT_THREADS:])
        customer, lang = thread.customer, thread.customer.language
        values = _values(self.rng, customer, self.clock)
        lines = self.rng.sample(REPLY_LINES[lang], self.rng.randint(1, 3))
        text = _signed(self.rng, customer, [line.format(**values) for line in lines])
        text += "\n" + _quote(thread.last_text, lang, customer.name, self.clock)
        subject = f"{self.rng.choice(REPLY_PREFIX[lang])} {thread.subject}"
        parent = self.rng.choice(thread.ids)
        refs = thread.ids[-10:]
        in_reply_to = parent if kind == "reply" else None
        mail = self._customer_mail(
            kind,
            customer,
            subject,
            text,
            root=thread.root,
            in_reply_to=in_reply_to,
            references=refs,
        )
        thread.ids.append(mail.message_id)
        thread.last_text = text
        return mail

    def auto_reply(self, kind: str) -> BenchMail:
        threaded = kind == "auto-reply"
        thread = self.rng.choice(self.threads[-RECENT_THREADS:])
        customer = thread.customer if threaded else self.rng.choice(self.customers)
        lang = customer.language
        colleague = self.rng.choice(self.customers)
        body = AUTO_BODY[lang].format(
            date=_values(self.rng, customer, self.clock)["date"],
            colleague=f"{colleague.name} ({colleague.address})",
            closing=self.rng.choice(CLOSINGS[lang]),
            name=customer.name,
        )
        ack_id = f"<{self.rng.randbytes(6).hex()}.MT@example.com>"  # our ack: not known ahead
        subject = f"{self.rng.choice(AUTO_PREFIX[lang])} {thread.subject if threaded else ''}"
        mid = self.message_id(customer.domain)
        headers = {"Auto-Submitted": "auto-replied"}
        if self.rng.random() < 0.5:
            headers["X-Autoreply"] = "yes"
        raw = make_mail(
            from_addr=customer.header,
            subject=subject.strip(),
            body=body,
            message_id=mid,
            in_reply_to=ack_id if threaded else None,
            references=[thread.root, ack_id] if threaded else (),
            date=self.clock,
            headers=headers,
        )
        return BenchMail(kind, mid, raw, thread.root if threaded else None, lang)

    def bounce(self, kind: str) -> BenchMail:
        thread = self.rng.choice(self.threads[-RECENT_THREADS:])
        mx = f"mx{self.rng.randint(1, 9)}.{self.rng.choice(('mailrelay', 'smtp-out'))}.example"
        mid = self.message_id(mx)
        raw = bounce_mail(
            message_id=mid,
            date=self.clock,
            mx=mx,
            recipient=f"x{self.rng.randint(1, 999)}.{thread.customer.address}",
            original_subject=thread.subject,
            original_id=f"<{self.rng.randbytes(6).hex()}.MT@example.com>",
            german=thread.customer.language == "de",
        )
        return BenchMail(kind, mid, raw, None, thread.customer.language)


def build_mail(
    *,
    customer: Customer,
    subject: str,
    text: str,
    message_id: str,
    date: datetime,
    html_only: bool,
    attachments: Sequence[tuple[str, str, bytes]],
    root: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> bytes:
    """A customer mail: make_mail of tests/servers.py, or an HTML-only mail built the same way."""
    if not html_only:
        return make_mail(
            from_addr=customer.header,
            subject=subject,
            body=text,
            message_id=message_id,
            in_reply_to=in_reply_to,
            references=references,
            date=date,
            attachments=attachments,
        )
    msg = EmailMessage(policy=email.policy.default)
    msg["From"] = customer.header
    msg["To"] = DEFAULT_USER
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    msg.set_content(_html(text), subtype="html")
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=email.policy.SMTP)


def bounce_mail(
    *,
    message_id: str,
    date: datetime,
    mx: str,
    recipient: str,
    original_subject: str,
    original_id: str,
    german: bool,
) -> bytes:
    """A Postfix-style (or, German, Exchange-style) non-delivery report of one of our acks."""
    boundary = f"{message_id.strip('<>').split('@')[0]}/{mx}"
    when = email.utils.format_datetime(date)
    subject = (
        f"Unzustellbar: {original_subject}" if german else "Undelivered Mail Returned to Sender"
    )
    notice = (
        "Die Nachricht konnte nicht an alle Empfänger zugestellt werden."
        if german
        else "I'm sorry to have to inform you that your message could not be delivered."
    )
    status = f"550 5.1.1 <{recipient}>: Recipient address rejected: User unknown"
    lines = [
        "Return-Path: <>",
        f"Date: {when}",
        f"From: Mail Delivery System <MAILER-DAEMON@{mx}>",
        f"To: {DEFAULT_USER}",
        f"Subject: {encoded(subject)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        quopri.encodestring(f"{notice}\n\n<{recipient}>: {status}\n".encode()).decode(),
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {mx}",
        f"Arrival-Date: {when}",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        "Action: failed",
        "Status: 5.1.1",
        f"Remote-MTA: dns; {recipient.split('@')[1]}",
        f"Diagnostic-Code: smtp; {status}",
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
        f"From: {SUPPORT}",
        f"To: {recipient}",
        f"Subject: {encoded(original_subject)}",
        f"Message-ID: {original_id}",
        "Auto-Submitted: auto-replied",
        "",
        f"--{boundary}--",
        "",
    ]
    return "\n".join(lines).replace("\r\n", "\n").replace("\n", "\r\n").encode("ascii")


# ---------------------------------------------------------------------------------------------
# Corpus: expectations and description
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    tickets: int
    stored: set[str]  # Message-IDs of the incoming mail mailtick stores (not the ignored)
    acks: set[str]  # Message-IDs our sent acknowledgements must answer (In-Reply-To)
    held: set[str]  # Message-IDs whose acknowledgement the send caps hold (same subject)


def ack_key(mail: BenchMail, prefix: str = TicketsConfig.prefix) -> tuple[str, str]:
    """What the same-subject cap (mailtick.caps) compares: recipient, subject of the ack."""
    return mail.sender.lower(), subject_key(with_tag(mail.subject, prefix, "1"), prefix)


def expected(
    corpus: Sequence[BenchMail], per_subject: int = LimitsConfig.acks_per_subject
) -> Expected:
    """The outcome, from the corpus. Acknowledgements: the send caps let `per_subject` of
    them go to a customer per subject and day (the whole run is within a day); the
    later ones, in corpus (= UID) order, are stored and held."""
    tickets = sum(1 for mail in corpus if mail.opens_ticket)
    stored = {mail.message_id for mail in corpus if mail.stored}
    acks: set[str] = set()
    held: set[str] = set()
    counts: Counter[tuple[str, str]] = Counter()
    for mail in (m for m in corpus if m.acknowledged):
        key = ack_key(mail)
        counts[key] += 1
        (acks if counts[key] <= per_subject else held).add(mail.message_id)
    return Expected(tickets, stored, acks, held)


def fresh_probes(builder: CorpusBuilder, corpus: Sequence[BenchMail], n: int) -> list[BenchMail]:
    """`n` new requests for the latency samples whose acknowledgement is not held: no
    customer and subject already in the corpus or an earlier probe."""
    used = {ack_key(mail) for mail in corpus if mail.acknowledged}
    probes: list[BenchMail] = []
    while len(probes) < n:
        mail = builder.one("new")
        if ack_key(mail) not in used:
            used.add(ack_key(mail))
            probes.append(mail)
    return probes


def describe_corpus(corpus: Sequence[BenchMail]) -> list[str]:
    kinds = Counter(mail.kind for mail in corpus)
    langs = Counter(mail.language for mail in corpus)
    files = Counter(mail.attachment for mail in corpus if mail.attachment)
    attached = sum(mail.attachment_bytes for mail in corpus) / 1e6
    html = sum(1 for mail in corpus if mail.html_only)
    size = sum(len(mail.raw) for mail in corpus)
    return [
        f"{len(corpus)} mails, {size / 1e6:.1f} MB (avg {size / len(corpus) / 1e3:.1f} KB)",
        f"new requests {kinds['new']} | replies {kinds['reply']} In-Reply-To, "
        f"{kinds['reply-refs']} References-only | auto-replies {kinds['auto-reply']} threaded, "
        f"{kinds['auto-reply-loose']} unthreaded | bounces {kinds['bounce']} "
        "(of no mail of ours: ignored)",
        f"German {langs['de']}, English {langs['en']} | HTML-only {html} | attachments "
        f"{sum(files.values())} (PDF {files['pdf']}, PNG {files['png']}, {attached:.1f} MB)",
    ]


# ---------------------------------------------------------------------------------------------
# Servers, database, config
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """A fresh, empty database URL; removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mailtick-bench-") as tmp:
            yield f"sqlite:///{tmp}/mailtick.db"
    else:
        with postgres_database("mt_bench") as url:
            yield url


class RemoteSink:
    """The SMTP sink in a process of its own, as a real mail server is: its CPU time
    (aiosmtpd parsing every acknowledgement) is not charged to mailtick's run.
    `collect()` stops it and returns every mail it accepted, parsed."""

    def __init__(self) -> None:
        context = mp.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve_sink, args=(child,), daemon=True)
        self.host = "127.0.0.1"
        self.port = 0

    def __enter__(self) -> RemoteSink:
        self._process.start()
        if not self._pipe.poll(30):
            raise RuntimeError("the SMTP sink process did not start")
        self.port = int(self._pipe.recv())
        return self

    def collect(self) -> list[EmailMessage]:
        self._pipe.send("stop")
        raws: list[bytes] = self._pipe.recv() if self._pipe.poll(60) else []
        return [parse_mail(raw) for raw in raws]

    def __exit__(self, *exc: object) -> None:
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve_sink(pipe: Any) -> None:
    with SmtpSink() as sink:
        pipe.send(sink.port)
        pipe.recv()  # "stop"
        pipe.send([mail.raw for mail in sink.messages])


def make_config(dovecot: Dovecot, sink: SmtpSink | RemoteSink, db_url: str) -> Config:
    """mailtick's config as a deployment would have it: IMAP over TLS, default batch size."""
    data = {
        "imap": {
            "host": dovecot.host,
            "port": dovecot.tls_port,
            "security": "tls",
            "username": DEFAULT_USER,
            "password": DEFAULT_PASSWORD,
            "tls": {"ca_file": str(dovecot.cert_path)},
        },
        "smtp": {"host": sink.host, "port": sink.port, "security": "none", "from_address": SUPPORT},
        "database": {"url": db_url},
    }
    return parse_config(data, env={})


def setup_logging(path: str) -> None:
    """mailtick logs at INFO as `mailtick run` does, into `path`; its warnings also to stderr.
    mail-parser's warnings (one per text/rfc822-headers part of a bounce) and the send caps'
    "held ack" warnings (expected, counted by the checks) go to `path` only."""
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    to_stderr.addFilter(lambda record: not str(record.msg).startswith("held %s"))
    for name, handlers in (("mailtick", (to_file, to_stderr)), ("mailparser", (to_file,))):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


async def bounded(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout=seconds)
    except TimeoutError:
        raise RuntimeError(f"{what} did not finish within {seconds:g} s") from None


async def raw_fetch_parse(imap: ImapConfig) -> int:
    """What ingest cannot avoid: log in, SELECT, UID SEARCH, batched UID FETCH, parse each."""
    conn = ImapConnection(imap)
    count = 0
    try:
        await conn.open()
        await conn.select(imap.mailbox)
        uids = await conn.uids_after(0)
        for start in range(0, len(uids), imap.batch_size):
            for _uid, data in await conn.fetch(uids[start : start + imap.batch_size]):
                parse(data)
                count += 1
    finally:
        await conn.close()
    return count


@dataclass(frozen=True)
class Timed:
    seconds: float
    count: int

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def time_raw(config: Config, timeout: float) -> Timed:
    start = time.perf_counter()
    count = asyncio.run(bounded(raw_fetch_parse(config.imap), timeout, "raw fetch+parse"))
    return Timed(time.perf_counter() - start, count)


def time_mailtick(config: Config, timeout: float) -> tuple[Timed, OnceResult]:
    daemon = Daemon(config)
    start = time.perf_counter()
    result = asyncio.run(bounded(daemon.run_once(), timeout, "mailtick run_once"))
    return Timed(time.perf_counter() - start, result.ingest.fetched), result


# -- latency ---------------------------------------------------------------------------------


async def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds:g} s waiting for {what}")
        await asyncio.sleep(0.01)


async def ack_arrival(sink: SmtpSink, seen: int, message_id: str) -> float | None:
    """Poll the sink every 5 ms for the ack answering `message_id`: monotonic time, or None."""
    deadline = time.monotonic() + LATENCY_SAMPLE_TIMEOUT
    while time.monotonic() < deadline:
        for mail in sink.messages[seen:]:
            if str(mail.message["In-Reply-To"] or "").strip() == message_id:
                return time.monotonic()
        await asyncio.sleep(LATENCY_POLL)
    return None


async def one_sample(client: Any, sink: SmtpSink, mail: BenchMail) -> float | None:
    seen = len(sink.messages)
    start = time.monotonic()
    await asyncio.to_thread(client.append, mail.raw)
    arrived = await ack_arrival(sink, seen, mail.message_id)
    return None if arrived is None else arrived - start


async def one_push(conn: ImapConnection, client: Any, mail: BenchMail) -> float | None:
    stop = asyncio.Event()
    idle = asyncio.create_task(conn.idle(LATENCY_SAMPLE_TIMEOUT, stop))
    await asyncio.sleep(IDLE_SETTLE)  # IDLE is on before the APPEND
    start = time.monotonic()
    await asyncio.to_thread(client.append, mail.raw, PROBE_MAILBOX)
    news = await idle
    return time.monotonic() - start if news else None


async def raw_idle_push(
    imap: ImapConfig, dovecot: Dovecot, mails: Sequence[BenchMail]
) -> list[float | None]:
    """The floor under the latency: APPEND -> EXISTS pushed to a bare idling client.
    Uses a mailbox of its own, so the daemon never sees these mails."""
    conn = ImapConnection(imap)
    client = await asyncio.to_thread(dovecot.client)
    try:
        await asyncio.to_thread(client.create, PROBE_MAILBOX)
        await conn.open()
        await conn.select(PROBE_MAILBOX)
        return [await one_push(conn, client, mail) for mail in mails]
    finally:
        await conn.close()
        await asyncio.to_thread(client.close)


async def measure_latency(
    config: Config, dovecot: Dovecot, sink: SmtpSink, mails: Sequence[BenchMail]
) -> list[float | None]:
    """APPEND one new request at a time while `mailtick run` idles; None: no ack in time."""
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(), name="mailtick-run")
    client = None
    try:
        await wait_until(
            lambda: daemon.watcher.connected.is_set() or task.done(), IDLE_WAIT, "IDLE"
        )
        if task.done():
            task.result()  # the daemon died: raise why
        await asyncio.sleep(LATENCY_GAP)  # from catch-up done to IDLE sent
        client = await asyncio.to_thread(dovecot.client)
        samples = []
        for mail in mails:
            if task.done():  # stopped early (a signal) or died: no point waiting for acks
                raise RuntimeError("mailtick run ended during the latency samples")
            samples.append(await one_sample(client, sink, mail))
            await asyncio.sleep(LATENCY_GAP)
        return samples
    finally:
        if client is not None:
            await asyncio.to_thread(client.close)
        daemon.request_stop()
        await bounded(task, 40, "mailtick run to stop")


# ---------------------------------------------------------------------------------------------
# Correctness checks
# ---------------------------------------------------------------------------------------------


def check_mailboxes(dovecot: Dovecot, corpus: Sequence[BenchMail]) -> list[str]:
    problems = []
    with dovecot.client() as client:
        inbox, quarantine = client.count("INBOX"), client.count("Quarantine")
        processed = client.message_ids("Processed")
    if inbox:
        problems.append(f"INBOX still holds {inbox} mails")
    if quarantine:
        problems.append(f"Quarantine holds {quarantine} mails")
    if len(processed) != len(set(processed)):
        problems.append(f"Processed holds {len(processed) - len(set(processed))} duplicates")
    if set(processed) != {mail.message_id for mail in corpus}:
        problems.append(f"Processed holds {len(processed)} mails, not the {len(corpus)} appended")
    return problems


def is_drift_warning(mail: EmailMessage) -> bool:
    """mailtick's "this looks like a new topic, reply NEU/NEW" mail ([drift] action = warn)."""
    text = str(mail.get_content()) if not mail.is_multipart() else ""
    return any(line.strip() in ("NEU", "NEW") for line in text.splitlines())


def check_sink(delivered: Sequence[EmailMessage], want: Expected) -> list[str]:
    acks = [m for m in delivered if str(m["In-Reply-To"] or "").strip() in want.acks]
    leaked = sum(1 for m in delivered if str(m["In-Reply-To"] or "").strip() in want.held)
    if leaked:
        return [f"sink got {leaked} acknowledgements the send caps should have held"]
    others = [m for m in delivered if m not in acks]
    if not all(is_drift_warning(m) for m in others):
        return [f"{len(others)} mails at the sink are neither acknowledgements nor drift warnings"]
    answered = [str(m["In-Reply-To"] or "").strip() for m in acks]
    ids = [str(m["Message-ID"] or "").strip() for m in acks]
    problems = []
    if len(acks) != len(want.acks):
        problems.append(f"sink got {len(acks)} acknowledgements, expected {len(want.acks)}")
    if len(set(ids)) != len(ids) or len(set(answered)) != len(answered):
        problems.append("duplicate acknowledgements (Message-ID or In-Reply-To)")
    if set(answered) != want.acks:
        problems.append(f"{len(want.acks ^ set(answered))} requests without exactly one ack")
    return problems


def check_database(
    url: str, corpus: Sequence[BenchMail], want: Expected
) -> tuple[list[str], Counter[str]]:
    """Problems, and the acknowledgements' outbox rows by status."""
    db = open_database(url)
    try:
        tickets = Ticket.select().count()
        rows = Message.select(Message.message_id, Message.ticket, Message.thread_rule).where(
            Message.direction == "in"
        )
        stored = {row.message_id: (int(row.ticket_id), str(row.thread_rule)) for row in rows}
        query = Outbox.select(Outbox.status, Message.ticket).join(Message)
        acks = [
            (str(row.status), int(row.message.ticket_id))
            for row in query.where(Message.kind == "ack")
        ]
        quarantined = Quarantine.select().count()
    finally:
        db.close()
    statuses = Counter(status for status, _ in acks)
    held_on = sorted(ticket for status, ticket in acks if status == "held")
    problems = []
    if tickets != want.tickets:
        problems.append(f"{tickets} tickets, expected {want.tickets}")
    if statuses != Counter(sent=len(want.acks), held=len(want.held)) or quarantined:
        found = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        problems.append(
            f"acknowledgements in the outbox: {found or 'none'} (expected {len(want.acks)} "
            f"sent, {len(want.held)} held), quarantined {quarantined}"
        )
    elif held_on != sorted(stored[mid][0] for mid in want.held if mid in stored):
        problems.append("held acknowledgements on the wrong tickets")
    return problems + check_threads(stored, corpus, want), statuses


def check_threads(
    stored: dict[str, tuple[int, str]], corpus: Sequence[BenchMail], want: Expected
) -> list[str]:
    if set(stored) != want.stored:
        ignored = sum(1 for m in corpus if not m.stored and m.message_id in stored)
        return [
            f"{len(stored)} incoming messages stored, expected {len(want.stored)} "
            f"({ignored} of them should have been ignored)"
        ]
    kept = [m for m in corpus if m.stored]
    wrong_ticket = sum(
        1 for m in kept if stored[m.message_id][0] != stored[m.root or m.message_id][0]
    )
    wrong_rule = sum(1 for m in kept if stored[m.message_id][1] != THREAD_RULE[m.kind])
    owners = [stored[m.message_id][0] for m in kept if m.opens_ticket]
    problems = []
    if wrong_ticket or wrong_rule:
        problems.append(f"threading: {wrong_ticket} on a wrong ticket, {wrong_rule} by wrong rule")
    if len(set(owners)) != len(owners):
        problems.append("two ticket-opening mails share a ticket")
    return problems


# ---------------------------------------------------------------------------------------------
# One run, many runs, the report
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    raw: Timed
    mailtick: Timed
    once: OnceResult
    load_seconds: float
    acks: Counter[str] = field(default_factory=Counter)  # outbox rows of acks by status
    problems: list[str] = field(default_factory=list)
    latencies: list[float | None] = field(default_factory=list)
    pushes: list[float | None] = field(default_factory=list)  # raw IDLE push, same samples

    @property
    def ratio(self) -> float:
        return self.mailtick.rate / self.raw.rate if self.raw.rate else 0.0

    @property
    def latency_ok(self) -> list[float]:
        return [x for x in self.latencies if x is not None]


def append_corpus(dovecot: Dovecot, corpus: Sequence[BenchMail]) -> float:
    start = time.perf_counter()
    with dovecot.client() as client:
        uids = client.append_many(mail.raw for mail in corpus)
    if len(uids) != len(corpus):
        raise RuntimeError(f"appended {len(uids)} of {len(corpus)} mails")
    return time.perf_counter() - start


def one_run(
    args: argparse.Namespace, corpus: Sequence[BenchMail], probes: Sequence[BenchMail]
) -> RunResult:
    want = expected(corpus)
    with Dovecot() as dovecot, database(args.db) as url:
        with RemoteSink() as remote:
            config = make_config(dovecot, remote, url)
            load = append_corpus(dovecot, corpus)
            raw = time_raw(config, args.timeout)
            timed, once = time_mailtick(config, args.timeout)
            acks = remote.collect()
        result = RunResult(raw, timed, once, load)
        result.problems += check_mailboxes(dovecot, corpus)
        result.problems += check_sink(acks, want)
        problems, result.acks = check_database(url, corpus, want)
        result.problems += problems
        with SmtpSink() as sink:  # in-process, so the latency probe sees each ack at once
            config = make_config(dovecot, sink, url)
            if probes and not result.problems:
                result.pushes = asyncio.run(raw_idle_push(config.imap, dovecot, probes))
                result.latencies = asyncio.run(measure_latency(config, dovecot, sink, probes))
                result.problems += latency_problems(result)
    return result


def latency_problems(run: RunResult) -> list[str]:
    limit = f"within {LATENCY_SAMPLE_TIMEOUT:g} s"
    problems = []
    if None in run.latencies:
        problems.append(f"latency: {run.latencies.count(None)} acks did not arrive {limit}")
    if None in run.pushes:
        problems.append(f"raw IDLE: {run.pushes.count(None)} APPENDs were not pushed {limit}")
    return problems


def print_run(number: int, total: int, run: RunResult) -> None:
    once = run.once
    print(f"\nrun {number}/{total}  (corpus appended in {run.load_seconds:.2f} s)")
    print(f"  raw fetch+parse     {_timed(run.raw)}")
    print(f"  mailtick run_once   {_timed(run.mailtick)}   ratio {run.ratio:.2f}")
    print(
        f"                      fetched {once.ingest.fetched}, acked {once.ingest.acked}, "
        f"quarantined {once.ingest.quarantined}, retry {once.ingest.retry}; "
        f"sent {once.send.sent}, deferred {once.send.deferred}, failed {once.send.failed}"
    )
    print(
        f"                      acknowledgements sent {run.acks['sent']}, "
        f"held {run.acks['held']} (same customer and subject)"
    )
    print(f"  checks              {'; '.join(run.problems) if run.problems else 'OK'}")
    if run.latencies:
        lat = run.latency_ok
        print(f"  latency             {len(lat)}/{len(run.latencies)} acks: {_latency(lat)}")
        push = [x for x in run.pushes if x is not None]
        print(f"  raw IDLE push       {len(push)}/{len(run.pushes)} EXISTS: {_latency(push)}")


def _timed(t: Timed) -> str:
    return f"{t.count} mails in {t.seconds:7.2f} s = {t.rate:7.1f} mails/s"


def _p90(values: Sequence[float]) -> float:
    return (
        statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]
    )


def _latency(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"median {statistics.median(values) * 1e3:.0f} ms, p90 {_p90(values) * 1e3:.0f} ms, "
        f"max {max(values) * 1e3:.0f} ms"
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISSED"


def print_summary(runs: Sequence[RunResult], wall: float) -> None:
    median = statistics.median
    raw, mt = median(r.raw.rate for r in runs), median(r.mailtick.rate for r in runs)
    ratio = median(r.ratio for r in runs)
    of = f" (median of {len(runs)} runs)" if len(runs) > 1 else ""
    print(f"\nresult{of}")
    print(f"  throughput  raw {raw:.1f} mails/s, mailtick {mt:.1f} mails/s")
    print(
        f"              ratio mailtick/raw {ratio:.2f}  target >= {THROUGHPUT_TARGET:.2f}: "
        f"{verdict(ratio >= THROUGHPUT_TARGET)}"
    )
    with_latency = [r.latency_ok for r in runs if r.latency_ok]
    if with_latency:
        med = median(median(lat) for lat in with_latency)
        p90 = median(_p90(lat) for lat in with_latency)
        worst = median(max(lat) for lat in with_latency)
        print(
            f"  latency     APPEND -> ack median {med * 1e3:.0f} ms, p90 {p90 * 1e3:.0f} ms, "
            f"max {worst * 1e3:.0f} ms  target median < {LATENCY_TARGET:g} s: "
            f"{verdict(med < LATENCY_TARGET)}"
        )
        pushes = [[x for x in r.pushes if x is not None] for r in runs]
        floor = median(median(p) for p in pushes if p) if any(pushes) else float("nan")
        print(
            f"              of which Dovecot's IDLE push alone (raw client): {floor * 1e3:.0f} ms"
        )
    held = median(r.acks["held"] for r in runs)
    print(f"  held acks   {held:g} per run (send cap: same customer, subject and day)")
    failed = [r for r in runs if r.problems]
    print(f"  checks      {'FAILED in ' + str(len(failed)) + ' run(s)' if failed else 'all OK'}")
    print(f"  wall time   {wall:.1f} s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="mails in the corpus (default 2000)")
    parser.add_argument("--latency-samples", type=int, default=20, help="0 skips (default 20)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=1, help="runs; medians are reported")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="limit per measured phase, s (default 900)"
    )
    parser.add_argument(
        "--log", default="/dev/null", help="mailtick's INFO log goes here (default /dev/null)"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.latency_samples < 0 or args.repeat < 1 or args.timeout <= 0:
        parser.error("--n and --repeat must be >= 1, --latency-samples >= 0, --timeout > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log)
    wall = time.perf_counter()
    start = time.perf_counter()
    builder = CorpusBuilder(args.seed)
    corpus = builder.build(args.n)
    probes = fresh_probes(builder, corpus, args.latency_samples * args.repeat)
    want = expected(corpus)
    print(
        f"mailtick ingest benchmark: N={args.n}, db={args.db}, seed={args.seed}, "
        f"repeat={args.repeat}, latency samples={args.latency_samples}"
    )
    print(f"corpus      generated in {time.perf_counter() - start:.1f} s")
    for line in describe_corpus(corpus):
        print(f"            {line}")
    ignored = len(corpus) - len(want.stored)
    print(
        f"expected    {want.tickets} tickets, {len(want.acks)} acknowledgements sent, "
        f"{len(want.held)} held (same customer and subject), {ignored} mails ignored"
    )
    parse(corpus[0].raw)  # warm-up: language model and imports, paid by neither side below
    runs = []
    for number in range(args.repeat):
        mine = probes[number * args.latency_samples : (number + 1) * args.latency_samples]
        runs.append(one_run(args, corpus, mine))
        print_run(number + 1, args.repeat, runs[-1])
    print_summary(runs, time.perf_counter() - wall)
    return 1 if any(run.problems for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
