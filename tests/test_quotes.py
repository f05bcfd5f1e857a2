"""Quote and signature stripping: the corpus in tests/data/quotes and the rules one by one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtick.ingest.quotes import QUOTE_HEADERS, SIGNATURE_RULES, ReplyParts, split_reply

CORPUS = Path(__file__).parent / "data" / "quotes"
CASES = sorted(
    path
    for path in CORPUS.glob("*.txt")
    if not path.name.endswith((".expected.txt", ".signature.txt"))
)


def normalised(text: str) -> str:
    """Trailing whitespace of each line and blank lines at both ends do not count."""
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def expected(case: Path, kind: str) -> str | None:
    path = case.with_name(f"{case.stem}.{kind}.txt")
    return normalised(path.read_text(encoding="utf-8")) if path.exists() else None


def split(case: Path) -> ReplyParts:
    return split_reply(case.read_text(encoding="utf-8"))


# --- the corpus ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_corpus_visible_text(case: Path) -> None:
    assert normalised(split(case).visible) == expected(case, "expected")


@pytest.mark.parametrize(
    "case",
    [case for case in CASES if expected(case, "signature") is not None],
    ids=lambda case: case.stem,
)
def test_corpus_signature(case: Path) -> None:
    assert normalised(split(case).signature) == expected(case, "signature")


def test_report_exact_match_rate() -> None:
    """Prints the exact-match rate (run with -s); the per-case tests above do the failing."""
    misses = [c.stem for c in CASES if normalised(split(c).visible) != expected(c, "expected")]
    hits = len(CASES) - len(misses)
    print(f"\nquotes corpus: visible exact match {hits}/{len(CASES)} ({hits / len(CASES):.0%})")
    for stem in misses:
        print(f"  miss: {stem}")
    assert len(CASES) >= 40


# --- inline answers -----------------------------------------------------------------------

INLINE = """\
Hallo Frau Schneider,

Am 05.11.24 um 14:03 schrieb Hostwerk Support:
> Welche PHP-Version nutzen Sie?

8.2

> Und welches CMS?
> (WordPress, TYPO3, Joomla)

TYPO3 12, seit Oktober.

Gruß
Markus
"""


def test_inline_answers_stay_visible_and_quotes_go_in_order() -> None:
    parts = split_reply(INLINE)
    assert parts.visible == "Hallo Frau Schneider,\n\n8.2\n\nTYPO3 12, seit Oktober."
    assert parts.quoted == (
        "Am 05.11.24 um 14:03 schrieb Hostwerk Support:\n"
        "> Welche PHP-Version nutzen Sie?\n\n"
        "> Und welches CMS?\n> (WordPress, TYPO3, Joomla)"
    )
    assert (parts.signature, parts.quote_rule) == ("Gruß\nMarkus", "schrieb-de")


def test_bottom_posting_keeps_the_answer_below_the_quote() -> None:
    text = "On Tue, 5 Nov 2024 at 14:03, Support <s@x.example> wrote:\n> Does it work?\n\nYes.\n"
    parts = split_reply(text)
    assert (parts.visible, parts.quote_rule) == ("Yes.", "wrote-en")


def test_top_posted_outlook_reply_cuts_the_unmarked_history() -> None:
    text = (
        "Bitte umstellen.\n\nVon: Support <s@x.example>\nGesendet: Montag, 4. November 2024 "
        "09:12\nAn: Kunde <k@y.example>\nBetreff: PHP\n\nDürfen wir umstellen?\n"
    )
    parts = split_reply(text)
    assert (parts.visible, parts.quote_rule) == ("Bitte umstellen.", "header-block-de")
    assert parts.quoted.endswith("Dürfen wir umstellen?")


def test_forwarded_mail_counts_as_quoted() -> None:
    text = "FYI, see below.\n\n---------- Forwarded message ---------\nFrom: A <a@x>\n\nBounce.\n"
    parts = split_reply(text)
    assert (parts.visible, parts.quote_rule) == ("FYI, see below.", "forward-en")
    assert "Bounce." in parts.quoted


# --- "wrote:" in prose ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "In your last mail you wrote:\n\nplease clear the cache.\n\nI did, no change.",
        'My colleague wrote: "it works in a private window". Not for us.',
        "On Monday our admin wrote:\nthe DNS is fine. It is not.",
        "Am Freitag schrieb uns die Sparkasse:\nLastschrift abgelehnt. Warum?",
        "Unser Chef schrieb am Telefon:\nbitte bis Montag.",
        "Hi,\n\nsee the log:\n\nOn 2024-11-04 the cron job failed.\nIt said: disk full.",
    ],
)
def test_wrote_in_prose_is_never_cut(text: str) -> None:
    parts = split_reply(text)
    assert parts.visible == text.strip() and parts.quoted == ""


# --- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "visible", "signature", "rule"),
    [
        (
            "Bitte prüfen.\n\n-- \nJörg Müller\nACME GmbH",
            "Bitte prüfen.",
            "-- \nJörg Müller\nACME GmbH",
            "dash-delimiter",
        ),
        ("Bitte prüfen.\n\nViele Grüße\nJörg", "Bitte prüfen.", "Viele Grüße\nJörg", "sign-off"),
        (
            "Please check.\n\nBest regards,\nJane",
            "Please check.",
            "Best regards,\nJane",
            "sign-off",
        ),
        ("Please check.\n\nThanks,\nJane Doe", "Please check.", "Thanks,\nJane Doe", "sign-off"),
        ("Bitte prüfen.\n\nLG Jörg", "Bitte prüfen.", "LG Jörg", "sign-off"),
        ("Passt.\n\nGesendet von meinem iPhone", "Passt.", "Gesendet von meinem iPhone", "mobile"),
        ("OK.\n\nSent from my iPhone", "OK.", "Sent from my iPhone", "mobile"),
        (
            "Bitte prüfen.\n\nMit freundlichen Grüßen\n\nThomas Berger\nBerger & Klein GmbH\n"
            "Tel. +49 89 3838 2710\nwww.berger-klein.example",
            "Bitte prüfen.",
            "Mit freundlichen Grüßen\n\nThomas Berger\nBerger & Klein GmbH\n"
            "Tel. +49 89 3838 2710\nwww.berger-klein.example",
            "sign-off",
        ),
    ],
)
def test_signatures(text: str, visible: str, signature: str, rule: str) -> None:
    parts = split_reply(text)
    assert (parts.visible, parts.signature, parts.signature_rule) == (visible, signature, rule)


@pytest.mark.parametrize(
    "text",
    [
        "Bitte zurückspielen.\n\nViele Grüße\nJörg\n\nPS: Geht das heute noch?",
        "Best regards,\nJane\n\nOne more thing: which VAT ID do you have on file?",
        "The reset worked.\nThank you!\n\nMaria",  # a thanks ending a paragraph is content
        "Thanks, that fixed it",  # not a name after the comma
        "Danke!",  # nothing before it: all the sender wrote
        "It works.\n\nSent from my desk, which is easier than from my phone.",
        "Steps:\n\n--\nthen restart the server and clear the cache, which takes about ten minutes.",
    ],
)
def test_sign_off_heuristic_is_conservative(text: str) -> None:
    parts = split_reply(text)
    assert (parts.visible, parts.signature) == (text.strip(), "")


def test_signature_inside_the_quote_stays_quoted() -> None:
    parts = split_reply("Done.\n\n> Viele Grüße\n> Anna\n> -- \n> Hostwerk")
    assert (parts.visible, parts.signature) == ("Done.", "")


# --- the rule table ------------------------------------------------------------------------

# One sample per QUOTE_HEADERS rule: the visible text is always "Text." and the rule is named.
RULE_SAMPLES = {
    "original-message-en": "Text.\n\n-----Original Message-----\nFrom: a\n\nold",
    "original-message-de": "Text.\n\n-----Ursprüngliche Nachricht-----\nVon: a\n\nalt",
    "forward-en": "Text.\n\nBegin forwarded message:\n\nFrom: a\nold",
    "forward-de": "Text.\n\n-------- Weitergeleitete Nachricht --------\nBetreff: x\n\nalt",
    "forward-fr": "Text.\n\n---------- Message transféré ---------\nDe : a\n\nancien",
    "header-block-en": "Text.\n\nFrom: A <a@x>\nSent: Monday\nTo: B\nSubject: x\n\nold",
    "header-block-de": "Text.\n\n" + "_" * 32 + "\nVon: A\nGesendet: Mo\nAn: B\n\nalt",
    "header-block-fr": "Text.\n\nDe : A <a@x>\nEnvoyé : lundi\nÀ : B\nObjet : x\n\nancien",
    "wrote-en": "Text.\n\nOn Mon, 4 Nov 2024 at 09:12, A <a@x> wrote:\n\n> old",
    "wrote-en-wrapped": "Text.\n\nOn Mon, 4 Nov 2024 at 09:12, A <\na@x> wrote:\n\n> old",
    "schrieb-de": "Text.\n\nAm 04.11.24 um 09:12 schrieb A:\n> alt",
    "schrieb-de-wrapped": "Text.\n\nAm So., 1. Jan. 2023 um 17:22 Uhr\nschrieb A <\na@x>:\n\n> alt",
    "hat-geschrieben-de": "Text.\n\nAm Di., 5. Nov. 2024, 14:03 hat A <a@x> geschrieben:\n\n> alt",
    "schrieb-am-de": "Text.\n\nA <a@x> schrieb am Mo., 4. Nov. 2024, 09:12:\n\n> alt",
    "wrote-on-en": "Text.\n\nA <a@x> wrote on 04/11/2024 09:12:\n\n> old",
    "a-ecrit-fr": "Text.\n\nLe lun. 4 nov. 2024 à 09:12, A <a@x> a écrit :\n\n> ancien",
    "a-ecrit-fr-wrapped": "Text.\n\nLe lun. 4 nov. 2024 à 09:12, A <\na@x> a écrit :\n\n> ancien",
    "zitat-von-de": "Text.\n\nZitat von A <a@x>:\n\n> alt",
    "name-wrote": "Text.\n\nJane Doe wrote:\n> old",
}


def test_every_quote_rule_has_a_sample() -> None:
    names = [name for name, _pattern, _needs_quote in QUOTE_HEADERS]
    assert len(set(names)) == len(names) and set(names) == set(RULE_SAMPLES)
    assert [name for name, _finder in SIGNATURE_RULES] == ["dash-delimiter", "mobile", "sign-off"]


@pytest.mark.parametrize(("rule", "text"), RULE_SAMPLES.items())
def test_quote_rule_is_named(rule: str, text: str) -> None:
    parts = split_reply(text)
    assert (parts.visible, parts.quote_rule) == ("Text.", rule)


def test_no_quote_no_signature() -> None:
    assert split_reply("Hallo,\r\nbitte Postfach anlegen.\r\n") == ReplyParts(
        "Hallo,\nbitte Postfach anlegen.", "", ""
    )


# --- nothing is lost -----------------------------------------------------------------------

LINES = st.sampled_from(
    [
        "",
        "Hallo,",
        "bitte prüfen Sie das Postfach.",
        "> quoted",
        ">> deeper",
        "On Mon, 4 Nov 2024 at 09:12, A <a@x> wrote:",
        "Am 04.11.24 um 09:12 schrieb A:",
        "-----Ursprüngliche Nachricht-----",
        "From: A <a@x>",
        "Sent: Monday",
        "To: B",
        "-- ",
        "--",
        "Viele Grüße",
        "Thanks,",
        "Jörg",
        "Sent from my iPhone",
        "Tel. +49 89 1234567",
        "PS: noch was?",
    ]
)


@given(st.lists(st.one_of(LINES, st.text(max_size=30)), max_size=30))
def test_every_line_ends_up_in_exactly_one_part(lines: list[str]) -> None:
    text = "\n".join(lines)
    parts = split_reply(text)

    def texts(value: str) -> Counter[str]:
        return Counter(line.rstrip() for line in value.split("\n") if line.strip())

    source = text.replace("\r\n", "\n").replace("\r", "\n")
    assert texts(parts.visible) + texts(parts.quoted) + texts(parts.signature) == texts(source)
