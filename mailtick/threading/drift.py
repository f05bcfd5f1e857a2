"""Topic drift: does a customer's reply raise a new topic? Pure text scoring, touches nothing."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import TextIO

from mailtick.ingest.quotes import split_reply
from mailtick.threading.subject import normalise

# Score >= threshold -> new topic. The weights below are set so that 0.5 (log-odds 0) is the
# natural cut; raise it to warn less often. Config: [drift] threshold.
DEFAULT_THRESHOLD = 0.5

# Evidence below this (in log-odds) is not worth a reason line.
_REASON_MIN = 0.4
# Only the most recent history counts beyond this many characters (plus the first message).
_HISTORY_CHARS = 20_000


@dataclass(frozen=True)
class DriftVerdict:
    new_topic: bool
    score: float  # 0..1
    reasons: tuple[str, ...]  # strongest evidence first

    def to_json(self) -> dict[str, object]:
        return {
            "new_topic": self.new_topic,
            "score": round(self.score, 2),
            "reasons": list(self.reasons),
        }


# --------------------------------------------------------------------------- normalisation

_FOLD = str.maketrans(
    {
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "ß": "ss",
        "é": "e",
        "è": "e",
        "à": "a",
        "á": "a",
        "ç": "c",
        "ñ": "n",
        "’": "'",
        "‘": "'",
    }
)
_TOKEN = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\s*\n\s*|(?<=\w):\s+(?=\w)")
_TAG = re.compile(r"\[\s*[A-Za-z][A-Za-z0-9]{0,9}\s*#\s*\d{2,12}\s*\]")


def fold(text: str) -> str:
    """Lower case with umlauts folded: "Mailzustellung Größe" -> "mailzustellung groesse"."""
    return text.lower().translate(_FOLD)


_STOP_DE = """
aber alle allem allen aller alles als also am an ander andere anderem anderen anderer anderes
auch auf aus bei beim bin bis bist bitte da dabei dadurch dafuer dagegen daher damit dann
darauf daran darum das dass dein deine dem den denn der des dessen deshalb die dies diese
diesem diesen dieser dieses doch dort du durch eben ein eine einem einen einer eines einfach
einige einmal er es etwa etwas euch euer fuer gar gegen gewesen ging gleich habe haben hat
hatte hatten hier hin hinter ich ihm ihn ihnen ihr ihre ihrem ihren ihrer im immer in ins ist
ja jede jedem jeden jeder jedes jetzt kann kein keine keinem keinen koennen koennte konnte
leider man manche mehr mein meine meinem meinen meiner mich mir mit moechte moechten muss
muessen nach nein nicht nichts noch nun nur ob oder ohne schon sehr sein seine seinem seinen
seiner seit selbst sich sie sind so soll sollen sollte sondern sonst ueber um und uns unser
unsere unserem unseren unserer unter viel viele vom von vor wann war waere waren warum was
weil welche welchem welchen welcher wenn wer werde werden wie wieder will wir wird wo wollen
wuerde wuerden zu zum zur zwar zwischen gibt geht gerne ganz hallo guten tag morgen abend
herr herrn frau damen herren sehr geehrte geehrter liebe lieber danke dank vielen viele
gruss gruesse gruessen beste freundlichen mfg lg vg kurz kurze kleine kleiner mal heute
gestern bereits eigentlich wohl vielleicht genau natuerlich irgendwie bzw usw ggf evtl
"""
_STOP_EN = """
a about above after again against all am an and any are aren as at be because been before
being below between both but by can cannot could couldn did didn do does doesn doing don down
during each few for from further had has have having he her here hers herself him himself his
how i if in into is isn it its itself just let me more most my myself no nor not now of off on
once only or other ought our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to too under
until up very was wasn we were weren what when where which while who whom why will with won
would wouldn you your yours yourself yourselves hi hello hey dear thanks thank cheers regards
best kind many please ll ve re d s t m get got also could would just yes ok okay still
much well today yesterday morning quick bit really though lot
"""
_STOP = frozenset(_STOP_DE.split()) | frozenset(_STOP_EN.split())

_SUFFIXES = ("ungen", "ing", "en", "er", "es", "em", "ed", "e", "n", "s")


@lru_cache(maxsize=4096)
def stem(token: str) -> str:
    """A crude German/English stem: enough to match "Postfaecher"/"Postfach", "bounces"/"bounce"."""
    for suffix in _SUFFIXES:
        if len(token) - len(suffix) >= 4 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


@lru_cache(maxsize=4096)
def grams(token: str) -> frozenset[str]:
    """Character 4-grams of one word with boundary marks: compounds share their parts."""
    padded = f"_{token}_"
    return frozenset(padded[i : i + 4] for i in range(len(padded) - 3))


_JOINED = re.compile(r"\b(wi|e)-(fi|mail)")


def content_tokens(text: str) -> list[str]:
    """Folded words that carry meaning: no stopwords, no short words, no long numbers
    (phone numbers, IBANs); "Wi-Fi" and "E-Mail" count as one word."""
    words = _TOKEN.findall(_JOINED.sub(r"\1\2", fold(text)))
    return [t for t in words if len(t) >= 3 and t not in _STOP and not (t.isdigit() and len(t) > 4)]


# --------------------------------------------------------------------------- topic lexicon

# Support topics and their words (folded). "wort*" matches the word anywhere inside a token,
# so compounds count ("Mailzustellung", "Rechnungsadresse"); bare entries match whole tokens.
# A word found in both the ticket and the reply makes them share a topic even when the exact
# words differ ("Kennwort"/"Passwort", "homepage"/"website").
TOPICS: Mapping[str, str] = {
    "e-mail": """mail* postfach* postfaech* mailbox* inbox posteingang* webmail* zustell* bounce*
        unzustellbar* smtp imap pop3 spam* junk blocklist* blacklist* spf dkim dmarc newsletter*
        weiterleit* weitergeleitet forward* alias* outlook* thunderbird* quota""",
    "website/hosting": """website* webseite* homepage* seite seiten site sites server* hosting*
        webspace* speicher* storage kontingent* traffic php* mysql datenbank* database* ftp
        cache* redis backup* sicherung* wiederherstell* restore* restored erreichbar* down 500
        502 503 504 timeout* langsam* slow* sluggish crawl ladezeit* firewall* cloudflare""",
    "SSL certificates": """ssl https zertifikat* certificat* sicher private""",
    "domains/DNS": """domain* dns nameserver* registrar* authcode* auth transfer* txt""",
    "CMS/shop": """wordpress* plugin* theme* drupal* typo3 joomla* shopware* woocommerce*
        ckeditor* editor* backend* shop onlineshop* checkout* artikel* migration* migrations*
        formular* form contact""",
    "billing": """rechnung* invoice* zahlung* payment* lastschrift* debit* abbuch* abgebucht*
        gutschrift* refund* erstatt* mahnung* betrag* charge* bill billing* kosten* cost*
        preis* price* prices tarif* vertrag* contract* kuendig* cancel* vat iban* pauschale*
        gebuehr* fee fees quote eur""",
    "user accounts/access": """benutzer* user* account* passwort* password* kennwort* login*
        anmeld* einlog* zugang* zugaeng* zugangsdaten* access 2fa faktor* factor*
        authenticator* authentifi* authentication rechte berechtigung* permission* admin*
        administrator* gesperrt* locked entsperr* signin""",
    "network/Wi-Fi": """wlan* wifi router* netzwerk* network* internet* vpn* lan hotspot*
        broadband* breitband* carrier* dsl fritzbox* tunnel* verbindung* connect* mbit*
        packet* forticlient* ikev2""",
    "office devices": """drucker* printer* kalender* calendar* laufwerk* drive laptop* battery*
        akku* iphone android handy* smartphone* scanner*""",
    "press releases": """pressemitteilung* mitteilung* presse* press release* releases
        veroeffentlich* publish* portal* partnerportal* redaktion* editorial* meldung abmahnung*
        journalist* media medien* distribut* verteil*""",
}


def _lexicon() -> tuple[dict[str, str], re.Pattern[str], dict[str, str]]:
    exact: dict[str, str] = {}
    parts: dict[str, str] = {}
    for topic, words in TOPICS.items():
        for word in words.split():
            if word.endswith("*"):
                parts[word[:-1]] = topic
            else:
                exact[word] = topic
    pattern = re.compile("|".join(sorted(parts, key=len, reverse=True)))
    return exact, pattern, parts


_EXACT, _PART_RE, _PARTS = _lexicon()


@lru_cache(maxsize=4096)
def concept(token: str) -> tuple[str, str] | None:
    """(topic, lexicon word) for a token, e.g. "rechnungsadresse" -> ("billing", "rechnung")."""
    if token in _EXACT:
        return _EXACT[token], token
    found = _PART_RE.search(token)
    if found is None:
        return None
    return _PARTS[found.group()], found.group()


# --------------------------------------------------------------------------- cues

# Phrases (folded, matched on word boundaries) that announce something new, and phrases that
# carry the same conversation on. Each has a weight in log-odds.
NEW_REQUEST_CUES: Mapping[str, float] = {
    "ausserdem": 1.0,
    "uebrigens": 1.0,
    "noch eine frage": 1.2,
    "noch eine sache": 1.2,
    "eine andere sache": 1.6,
    "anderes thema": 1.6,
    "anderes anliegen": 1.6,
    "anderes problem": 1.6,
    "weiteres problem": 1.4,
    "weitere frage": 1.0,
    "zusaetzlich": 0.6,
    "nebenbei": 1.0,
    "apropos": 1.0,
    "und noch was": 1.2,
    "noch etwas": 0.8,
    "unabhaengig davon": 1.4,
    "bei der gelegenheit": 1.2,
    "ich haette noch": 1.0,
    "another thing": 1.4,
    "another issue": 1.6,
    "another question": 1.4,
    "one more thing": 1.2,
    "by the way": 1.0,
    "btw": 1.0,
    "separate question": 1.6,
    "separately": 1.2,
    "unrelated": 1.6,
    "different issue": 1.6,
    "while i have you": 1.4,
    "on another note": 1.6,
    "additionally": 0.6,
    "also": 0.4,
    "new issue": 1.4,
    "quick one": 0.8,
}
CONTINUATION_CUES: Mapping[str, float] = {
    "immer noch": 1.2,
    "noch immer": 1.2,
    "weiterhin": 0.8,
    "nach wie vor": 1.2,
    "schon wieder": 0.8,
    "wieder": 0.3,
    "gibt es schon": 1.0,
    "wie ist der stand": 1.2,
    "stand": 0.4,
    "neuigkeiten": 1.0,
    "nachfrage": 0.8,
    "nachtrag": 1.0,
    "hier die": 0.8,
    "hier das": 0.8,
    "hier der": 0.8,
    "anbei": 0.6,
    "haengt an": 0.6,
    "wie besprochen": 1.0,
    "wie gewuenscht": 1.0,
    "wie vorgeschlagen": 1.0,
    "hat geklappt": 1.2,
    "klappt": 0.8,
    "funktioniert wieder": 1.2,
    "geht wieder": 1.2,
    "laeuft wieder": 1.2,
    "derselben": 0.8,
    "dieselbe": 0.8,
    "gleiche fehler": 1.0,
    "gleiche meldung": 1.0,
    "fehlt": 0.4,
    "still": 1.0,
    "again": 0.6,
    "any update": 1.4,
    "any news": 1.4,
    "following up": 1.2,
    "follow up": 1.0,
    "as you said": 1.0,
    "as suggested": 1.0,
    "here is": 0.8,
    "here's": 0.8,
    "attached": 0.5,
    "same error": 1.2,
    "same thing": 1.0,
    "same problem": 1.2,
    "worked": 0.8,
    "works now": 1.2,
    "fixed": 0.8,
    "sorted": 0.6,
    "tried": 0.6,
    "done": 0.6,
    "that did it": 1.2,
    "happening again": 1.2,
}
GRATITUDE = (
    "danke",
    "vielen dank",
    "thanks",
    "thank you",
    "cheers",
    "perfekt",
    "perfect",
    "super",
    "brilliant",
    "great",
)


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    alternatives = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(alternatives) + r")(?![a-z0-9])")


_NEW_RE = _phrase_pattern(NEW_REQUEST_CUES)
_CONT_RE = _phrase_pattern(CONTINUATION_CUES)
_THANKS_RE = _phrase_pattern(GRATITUDE)

# A pasted log or error output: timestamps, SMTP status codes, paths, stack frames, "key=value".
_LOG_LINE = re.compile(
    r"\d{1,4}[-/.]\d{1,2}[-/.]\d{2,4}[ T]\d{1,2}:\d{2}|\[\d{1,2}-\w{3}-\d{4}|\d{2}:\d{2}:\d{2}"
    r"|\b[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b|\b\d{1,3}(?:\.\d{1,3}){3}\b"
    r"|(?:/[\w.@-]+){3,}|\bat \S+\(|#\d+ \S|\w+=\w+|\bline \d+|0x[0-9a-f]{4,}|event id"
    r"|exception|stack trace|fatal error|uncaught|\berror code\b",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Vocabulary:
    """What the ticket (subject and history) has talked about."""

    stems: frozenset[str]
    grams: frozenset[str]
    topics: frozenset[str]

    def knows(self, token: str) -> bool:
        """The ticket has this word, an inflection of it, or (for long words) most of its
        4-grams, so "Mailzustellung" is known after "Zustellung der Mails"."""
        if stem(token) in self.stems:
            return True
        if len(token) < 6:
            return False
        own = grams(token)
        return len(own & self.grams) >= 0.7 * len(own)


def vocabulary(texts: Iterable[str]) -> Vocabulary:
    tokens = [t for text in texts for t in content_tokens(text)]
    found = (concept(t) for t in tokens)
    return Vocabulary(
        stems=frozenset(stem(t) for t in tokens),
        grams=frozenset().union(*(grams(t) for t in set(tokens))),
        topics=frozenset(c[0] for c in found if c is not None),
    )


@dataclass(frozen=True)
class Part:
    """One sentence of the new text, judged against the ticket."""

    text: str
    tokens: tuple[str, ...]
    known: float  # share of its words the ticket knows, 0..1
    question: bool


@dataclass(frozen=True)
class Analysis:
    """Everything the evidence functions look at, computed once per reply."""

    parts: tuple[Part, ...]  # the prose of the reply, sentence by sentence
    similarity: float  # share of the reply's words the ticket knows
    words: int  # content words in the prose
    log_lines: int  # lines of pasted log or error output
    prose: str  # folded prose, for cue phrases
    subject: str  # the new subject as a title, "" when unchanged
    subject_known: float
    foreign_topics: Mapping[str, tuple[str, ...]]  # topics the ticket never touched -> words
    own_topics: Mapping[str, tuple[str, ...]]  # topics shared with the ticket -> words
    closed_days: float | None

    def novel_parts(self, limit: float = 0.25, min_words: int = 3) -> list[Part]:
        return [p for p in self.parts if len(p.tokens) >= min_words and p.known <= limit]


def _ticket_texts(subject: str, history: Sequence[str]) -> list[str]:
    texts = [subject, subject]
    if history:
        texts.append(history[0])
    budget = _HISTORY_CHARS
    for text in reversed(history[1:]):
        if budget <= 0:
            break
        texts.append(text[-budget:])
        budget -= len(text)
    return texts


def _title(subject: str) -> str:
    return fold(normalise(_TAG.sub(" ", subject), "MT"))


def _split_log(text: str) -> tuple[list[str], int]:
    """The prose lines of a reply and how many lines look like pasted log output."""
    prose: list[str] = []
    log = 0
    for line in text.split("\n"):
        if len(_LOG_LINE.findall(line)) >= (1 if len(line) >= 40 else 2):
            log += 1
        else:
            prose.append(line)
    return prose, log


def _part(sentence: str, vocab: Vocabulary) -> Part:
    tokens = tuple(content_tokens(sentence))
    known = sum(vocab.knows(t) for t in tokens) / len(tokens) if tokens else 1.0
    return Part(sentence.strip(), tokens, known, sentence.rstrip().endswith("?"))


def _topics(tokens: Iterable[str], vocab: Vocabulary) -> tuple[dict[str, tuple[str, ...]], ...]:
    foreign: dict[str, list[str]] = {}
    own: dict[str, list[str]] = {}
    for token in tokens:
        found = concept(token)
        if found is not None:
            side = own if found[0] in vocab.topics else foreign
            side.setdefault(found[0], []).append(token)
    return (
        {k: tuple(dict.fromkeys(v)) for k, v in foreign.items()},
        {k: tuple(dict.fromkeys(v)) for k, v in own.items()},
    )


def analyse(
    ticket_subject: str,
    ticket_history: Sequence[str],
    new_subject: str,
    new_visible_text: str,
    closed_for: timedelta | None = None,
) -> Analysis:
    vocab = vocabulary(_ticket_texts(ticket_subject, ticket_history))
    prose_lines, log_lines = _split_log(new_visible_text)
    prose = "\n".join(prose_lines)
    parts = tuple(p for s in _SENTENCE.split(prose) if (p := _part(s, vocab)).text)
    title = _title(new_subject)
    changed = "" if title in ("", "(no subject)", _title(ticket_subject)) else title
    subject_part = _part(changed, vocab)
    tokens = [t for p in parts for t in p.tokens] + list(subject_part.tokens)
    words = sum(len(p.tokens) for p in parts)
    known = sum(p.known * len(p.tokens) for p in parts)
    foreign, own = _topics(tokens, vocab)
    return Analysis(
        parts=parts,
        similarity=known / words if words else 1.0,
        words=words,
        log_lines=log_lines,
        prose=fold(prose),
        subject=changed,
        subject_known=subject_part.known,
        foreign_topics=foreign,
        own_topics=own,
        closed_days=None if closed_for is None else closed_for.total_seconds() / 86400,
    )


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Finding:
    weight: float  # log-odds: > 0 speaks for a new topic, < 0 for the same topic
    reason: str


def _clip(text: str, size: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1].rstrip() + "…"


def _quoted(words: Iterable[str], limit: int = 3) -> str:
    return ", ".join(list(words)[:limit])


def lexical_similarity(a: Analysis) -> Finding | None:
    """Share of the reply's words (or their inflections and compound parts) in the ticket."""
    if a.words == 0:
        return None
    confidence = min(1.0, a.words / 6)
    weight = 5.0 * (0.35 - a.similarity) * confidence
    if a.similarity < 0.35:
        return Finding(weight, f"little in common with the ticket (similarity {a.similarity:.2f})")
    return Finding(weight, f"shares its words with the ticket (similarity {a.similarity:.2f})")


def novel_part(a: Analysis) -> Finding | None:
    """A substantial sentence unlike the ticket, next to text that does continue it."""
    if a.similarity < 0.35:
        return None  # the whole reply is unlike the ticket: lexical_similarity says so
    novel = a.novel_parts(limit=0.2, min_words=4)
    if not novel:
        return None
    share = sum(len(p.tokens) for p in novel) / a.words
    return Finding(0.5 + 3.0 * share, f'a part unlike the ticket: "{_clip(novel[0].text)}"')


def topic_shift(a: Analysis) -> Finding | None:
    """Support topics (billing, Wi-Fi, ...) the reply talks about and the ticket never did."""
    foreign = sum(len(v) for v in a.foreign_topics.values())
    own = sum(len(v) for v in a.own_topics.values())
    if foreign == 0:
        if own == 0:
            return None
        return Finding(-0.6, f"stays on the ticket's topic ({', '.join(a.own_topics)})")
    topic, words = max(a.foreign_topics.items(), key=lambda item: len(item[1]))
    return Finding(
        2.0 * foreign / (foreign + own),
        f'talks about {topic} ("{_quoted(words)}"), the ticket does not',
    )


def subject_change(a: Analysis) -> Finding | None:
    if not a.subject:
        return None
    if a.subject_known < 0.34:
        return Finding(1.5, f'new subject "{a.subject}" unlike the ticket')
    return Finding(-0.5, f'changed subject "{a.subject}" stays on the ticket\'s topic')


def _part_of(a: Analysis, position: int) -> Part | None:
    """The sentence of the reply that holds the folded prose position."""
    offset = 0
    for part in a.parts:
        found = a.prose.find(fold(part.text), offset)
        if found < 0:
            continue
        if found <= position < found + len(part.text):
            return part
        offset = found
    return None


def new_request_cue(a: Analysis) -> Finding | None:
    """ "außerdem", "by the way" ...: strong before text unlike the ticket, weak otherwise."""
    best: Finding | None = None
    for match in _NEW_RE.finditer(a.prose):
        cue = match.group(1)
        part = _part_of(a, match.start())
        novel = part is not None and part.known <= 0.3
        weight = NEW_REQUEST_CUES[cue] * (1.0 if novel else 0.3)
        if best is None or weight > best.weight:
            best = Finding(weight, f'new-request cue "{cue}"')
    return best


def continuation_cue(a: Analysis) -> Finding | None:
    """ "immer noch", "any update", "here is" ...: the reply carries the ticket on."""
    cues = dict.fromkeys(m.group(1) for m in _CONT_RE.finditer(a.prose))
    if not cues:
        return None
    weight = min(2.0, sum(CONTINUATION_CUES[c] for c in cues))
    return Finding(-weight, "continuation cue " + ", ".join(f'"{c}"' for c in list(cues)[:3]))


def gratitude(a: Analysis) -> Finding | None:
    found = _THANKS_RE.search(a.prose)
    return None if found is None else Finding(-0.5, f'thanks ("{found.group(1)}")')


def new_question(a: Analysis) -> Finding | None:
    questions = [p for p in a.novel_parts(limit=0.2, min_words=3) if p.question]
    if not questions:
        return None
    return Finding(0.8, f'asks a question unlike the ticket: "{_clip(questions[0].text)}"')


def length(a: Analysis) -> Finding | None:
    """Two words ("Danke!") are never a new topic; a few words rarely are."""
    if a.words <= 2:
        return Finding(-3.0, f"very short reply ({a.words} words)")
    if a.words <= 5:
        return Finding(-1.2, f"short reply ({a.words} words)")
    if a.words <= 8:
        return Finding(-0.5, f"short reply ({a.words} words)")
    return None


def pasted_log(a: Analysis) -> Finding | None:
    if a.log_lines == 0:
        return None
    return Finding(-1.2, f"pasted log or error output ({a.log_lines} lines)")


def time_since_closed(a: Analysis) -> Finding | None:
    if a.closed_days is None:
        return None
    if a.closed_days >= 14:
        return Finding(min(2.0, a.closed_days / 30), f"ticket closed {a.closed_days:.0f} days ago")
    if a.closed_days < 3:
        return Finding(-0.3, "ticket closed only recently")
    return None


# The table: every row adds its log-odds; the score is the logistic of the sum plus BIAS.
BIAS = -0.5
EVIDENCE: Sequence[tuple[str, Callable[[Analysis], Finding | None]]] = (
    ("lexical similarity", lexical_similarity),
    ("novel part", novel_part),
    ("topic shift", topic_shift),
    ("subject change", subject_change),
    ("new-request cue", new_request_cue),
    ("continuation cue", continuation_cue),
    ("gratitude", gratitude),
    ("new question", new_question),
    ("length", length),
    ("pasted log", pasted_log),
    ("time since closed", time_since_closed),
)


def findings(a: Analysis) -> list[tuple[str, Finding]]:
    return [(name, f) for name, judge in EVIDENCE if (f := judge(a)) is not None]


def _verdict(found: Sequence[tuple[str, Finding]], threshold: float) -> DriftVerdict:
    total = BIAS + sum(f.weight for _, f in found)
    score = 1.0 / (1.0 + math.exp(-total))
    new_topic = score >= threshold
    ranked = sorted((f for _, f in found), key=lambda f: -abs(f.weight))
    reasons = tuple(f.reason for f in ranked if abs(f.weight) >= _REASON_MIN)
    return DriftVerdict(new_topic, score, reasons)


def detect(
    ticket_subject: str,
    ticket_history: Sequence[str],
    new_subject: str,
    new_visible_text: str,
    *,
    closed_for: timedelta | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> DriftVerdict:
    """Does the reply (its visible text: no quotes, no signature) raise a new topic?"""
    a = analyse(ticket_subject, ticket_history, new_subject, new_visible_text, closed_for)
    return _verdict(findings(a), threshold)


# --------------------------------------------------------------------------- JSON contract

_REQUIRED = ("ticket_subject", "ticket_history", "new_subject", "new_message")


def _string(case: Mapping[str, object], key: str) -> str:
    if key not in case:
        raise ValueError(f'missing key "{key}"')
    value = case[key]
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, not {type(value).__name__}')
    return value


def _history(case: Mapping[str, object]) -> list[str]:
    if "ticket_history" not in case:
        raise ValueError('missing key "ticket_history"')
    value = case["ticket_history"]
    if not isinstance(value, list):
        raise ValueError(f'"ticket_history" must be a list of strings, not {type(value).__name__}')
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(
                f'"ticket_history"[{index}] must be a string, not {type(item).__name__}'
            )
    return value


def _closed_for(case: Mapping[str, object]) -> timedelta | None:
    value = case.get("closed_days_ago")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f'"closed_days_ago" must be a number >= 0 or null, not {value!r}')
    return timedelta(days=value)


def detect_raw(case: Mapping[str, object], threshold: float = DEFAULT_THRESHOLD) -> DriftVerdict:
    """The JSON contract: `new_message` is the raw body; quotes and signature are removed here
    with the splitter ingest uses. Optional "closed_days_ago": days since the ticket closed.
    Other keys are ignored (labelled cases can be fed as they are)."""
    if not isinstance(case, Mapping):
        raise ValueError(f"a drift case must be a JSON object, not {type(case).__name__}")
    history = _history(case)
    subject, new_subject = _string(case, "ticket_subject"), _string(case, "new_subject")
    visible = split_reply(_string(case, "new_message")).visible
    return detect(
        subject, history, new_subject, visible, closed_for=_closed_for(case), threshold=threshold
    )


def drift_command(stdin: TextIO, stdout: TextIO, threshold: float) -> int:
    """`mailtick drift --json`: one case as JSON on stdin, the verdict as JSON on stdout.
    Bad input: a message on stderr and exit status 2."""
    try:
        case = json.loads(stdin.read())
        verdict = detect_raw(case, threshold)
    except json.JSONDecodeError as error:
        print(f"mailtick drift: input is not valid JSON: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"mailtick drift: {error}", file=sys.stderr)
        return 2
    json.dump(verdict.to_json(), stdout, ensure_ascii=False)
    stdout.write("\n")
    return 0
