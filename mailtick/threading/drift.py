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

from mailtick.config import DriftConfig
from mailtick.ingest.quotes import split_reply
from mailtick.threading.subject import normalise

# Score >= threshold -> new topic; how the default was chosen is said at DriftConfig.threshold.
DEFAULT_THRESHOLD = DriftConfig.threshold

# Evidence weaker than this (in log-odds) is not worth a reason line.
_REASON_MIN = 0.4
# History beyond this many characters (newest first, after the first message) is not read.
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


# --------------------------------------------------------------------------- words


def _words(text: str) -> frozenset[str]:
    """A word list written as one string."""
    return frozenset(text.split())


_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "é": "e", "\u2019": "'"})
_TOKEN = re.compile(r"[a-z0-9]+")
_JOINED = re.compile(r"\b(wi|e)-(fi|mail)")  # "Wi-Fi", "E-Mail": one word each
_SENTENCE = re.compile(r"(?<=[^\d\s][.!?])\s+|(?<=\?)\s+|\s*\n\s*|(?<=\w):\s+(?=\w)")
_TAG = re.compile(r"\[\s*[A-Za-z][A-Za-z0-9]{0,9}\s*#\s*\d{2,12}\s*\]")

# German and English function words, plus the verbs, fillers and time words every support
# mail uses whatever its topic ("bekommen", "need", "heute", "two"): they say nothing about it.
_STOPWORDS = _words(
    """
    aber alle allem allen aller alles als also am an ander andere anderem anderen anderer
    anderes auch auf aus bei beim bin bis bist bitte da dabei dadurch dafuer dagegen daher
    damit dann darauf daran darum das dass dein deine dem den denn der des dessen deshalb die
    dies diese diesem diesen dieser dieses doch dort du durch eben ein eine einem einen einer
    eines einfach einige einmal er es etwa etwas euch euer fuer gar gegen gewesen ging gleich
    habe haben hat hatte hatten hier hin hinter ich ihm ihn ihnen ihr ihre ihrem ihren ihrer
    im immer in ins ist ja jede jedem jeden jeder jedes jetzt kann kein keine keinem keinen
    koennen koennte konnte leider man manche mehr mein meine meinem meinen meiner mich mir mit
    moechte moechten muss muessen nach nein nicht nichts noch nun nur ob oder ohne schon sehr
    sein seine seinem seinen seiner seit selbst sich sie sind so soll sollen sollte sondern
    sonst ueber um und uns unser unsere unserem unseren unserer unter viel viele vom von vor
    wann war waere waren warum was weil welche welchem welchen welcher wenn wer werde werden
    wie wieder will wir wird wo wollen wuerde wuerden zu zum zur zwar zwischen gibt geht gerne
    ganz hallo guten tag morgen abend herr herrn frau damen herren geehrte geehrter liebe
    lieber danke dank vielen gruss gruesse gruessen beste freundlichen mfg kurz kurze
    kleine kleiner mal heute gestern bereits eigentlich wohl vielleicht genau natuerlich
    irgendwie bzw usw ggf evtl kommt kommen komme bekommen bekommt bekam wurde wurden worden
    gemacht machen macht sehen sieht gesehen steht stehen stellen gestellt finden findet
    gefunden bleiben bleibt erhalten brauchen brauche braucht braeuchte braeuchten haette
    haetten geben gegeben wissen weiss sagen gesagt lassen hoffe hoffen denke glaube neue
    neuen neuer neues neu alte alten alter altes alt erste ersten zwei drei vier fuenf woche
    wochen monat monate tage tagen jahr jahre stunde stunden minute minuten uhr mittag nacht
    moin zusammen team leute problem probleme frage fragen anfrage anliegen hilfe helfen info
    infos information informationen schnell schnelle dringend gerade bald rein per via
    weitere weiteren weiterer sowie bisher
    a about above after again against all am an and any are aren as at be because been before
    being below between both but by can cannot could couldn did didn do does doesn doing don
    down during each few for from further had has have having he her here hers herself him
    himself his how i if in into is isn it its itself just let me more most my myself no nor
    not now of off on once only or other ought our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was wasn we were weren what when where which while who
    whom why will with won would wouldn you your yours yourself yourselves hi hello hey dear
    thanks thank cheers regards best kind many please ll ve re yes ok okay still much well
    today yesterday morning quick bit really though lot get gets getting got go goes going
    gone come comes coming came make makes made see sees seen saw say says said tell told take
    takes took taken give gives gave given need needs needed want wants wanted like use used
    using look looks looking keep keeps know let new old one two three four five first second
    last next week weeks month months day days year years hour hours minute minutes time times
    something anything nothing everything someone anyone everyone everybody nobody somebody
    way thing things back end set put problem problems issue issues question questions help
    info information team guys folks able always never ever yet already soon sure right
    currently maybe perhaps probably quite rather fine good great happen happened happens work
    works worked working seems seem around since
    """
)
_SUFFIXES = ("ungen", "ing", "en", "er", "es", "em", "ed", "e", "n", "s")


def fold(text: str) -> str:
    """Lower case with umlauts folded: "Größe" -> "groesse"."""
    return text.lower().translate(_FOLD)


def content_tokens(text: str) -> list[str]:
    """Folded words that carry meaning: no stopwords, no short words, no long numbers
    (phone numbers, IBANs)."""
    words = _TOKEN.findall(_JOINED.sub(r"\1\2", fold(text)))
    return [w for w in words if len(w) >= 3 and w not in _STOPWORDS and not _long_number(w)]


def _long_number(word: str) -> bool:
    return word.isdigit() and len(word) > 4


# Words support customers use for the same thing (folded): each group stems to its first word.
SYNONYMS = (
    "bild bilder foto fotos image images picture pictures photo photos",
    "passwort passwoerter kennwort kennwoerter password passwords",
    "website webseite webseiten homepage site",
    "rechnung rechnungen invoice invoices bill bills",
    "postfach postfaecher mailbox mailboxes inbox posteingang",
    "fehler error errors fehlermeldung",
    "login anmelden anmeldung einloggen signin",
    "benutzer user users nutzer benutzerkonto",
    "sicherung sicherungen backup backups",
    "wiederherstellen wiederherstellung restore restored",
    "kuendigung kuendigen cancel cancelled cancellation",
    "erstattung erstatten refund refunded gutschrift",
    "lastschrift abbuchung abgebucht debit",
    "wlan wifi funknetz",
    "drucker printer printers",
    "techniker engineer technician",
    "termin termine appointment appointments",
    "langsam slow sluggish",
    "zertifikat certificate ssl",
    "plugin plugins erweiterung erweiterungsmodul extension",
    "formular form",
    "weiterleitung weiterleiten forward forwarding",
    "spam junk",
)
_CANONICAL = {word: group.split()[0] for group in SYNONYMS for word in group.split()}


@lru_cache(maxsize=8192)
def stem(token: str) -> str:
    """A crude German/English stem: "postfaecher" -> "postfach" (synonym table),
    "bounces" -> "bounc"."""
    if token in _CANONICAL:
        return _CANONICAL[token]
    for suffix in _SUFFIXES:
        if len(token) - len(suffix) >= 4 and token.endswith(suffix):
            return token[: -len(suffix)]
    if len(token) == 4 and token.endswith("s"):
        return token[:-1]  # "logs" -> "log"
    return token


@lru_cache(maxsize=8192)
def grams(token: str) -> frozenset[str]:
    """Character 4-grams of one word with boundary marks: compounds share their parts."""
    padded = f"_{token}_"
    return frozenset(padded[i : i + 4] for i in range(len(padded) - 3))


@lru_cache(maxsize=8192)
def head_grams(root: str) -> frozenset[str]:
    """The 4-grams of a word start: all present when some ticket word begins with `root`."""
    padded = f"_{root}"
    return frozenset(padded[i : i + 4] for i in range(len(padded) - 3))


@lru_cache(maxsize=8192)
def tail_grams(token: str) -> frozenset[str]:
    """The 4-grams of a word end: all present when a ticket compound ends with `token`
    ("Meldung" after "Fehlermeldung")."""
    padded = f"{token}_"
    return frozenset(padded[i : i + 4] for i in range(len(padded) - 3))


# --------------------------------------------------------------------------- topic lexicon

# Support topics and their words (folded). "wort*" matches inside a word, so compounds count
# ("Rechnungsadresse", "Spamfilter"); bare entries match whole words. Words that turn up in
# every kind of request ("server", "account", "Kundencenter", "iPhone") are left out.
TOPICS: Mapping[str, str] = {
    "e-mail": """mail* postfach* postfaech* mailbox* inbox posteingang* webmail* zustell*
        bounce* unzustellbar* smtp imap pop3 spam* junk blocklist* blacklist* spf dkim dmarc
        newsletter* weiterleit* weitergeleitet forward* alias* outlook* thunderbird* quota""",
    "website/hosting": """website* webseite* homepage* seite seiten site sites webserver*
        hosting* webspace* speicherplatz* speicher storage kontingent* traffic php* mysql datenbank*
        database* ftp cache* redis backup* sicherung* wiederherstell* restore* restored
        erreichbar* down 500 502 503 504 timeout* langsam* slow* sluggish crawl ladezeit*
        firewall* cloudflare""",
    "SSL certificates": """ssl https zertifikat* certificat* sicher private""",
    "domains/DNS": """domain* dns nameserver* registrar* authcode* auth transfer* txt""",
    "CMS/shop": """wordpress* plugin* theme* drupal* typo3 joomla* shopware* woocommerce*
        ckeditor* editor* backend* shop onlineshop* checkout* artikel* migration* formular*
        form contact""",
    "billing": """rechnung* invoice* zahlung* payment* lastschrift* debit* abbuch* abgebucht*
        gutschrift* refund* erstatt* mahnung* betrag* charge* bill billing* kosten* cost*
        preis* price* prices tarif* vertrag* contract* kuendig* cancel* vat iban* pauschale*
        gebuehr* fee fees quote eur""",
    "user accounts/access": """benutzer* user* passwort* password* kennwort* login* anmeld*
        einlog* zugang* zugaeng* access 2fa faktor* factor* authenticator* authentifi*
        authentication rechte berechtigung* permission* admin* gesperrt* locked entsperr*
        signin""",
    "network/Wi-Fi": """wlan* wifi router* netzwerk* network* internet* vpn* lan hotspot*
        broadband* breitband* carrier* dsl fritzbox* tunnel* verbindung* connect* mbit*
        packet* forticlient* ikev2""",
    "office devices": """drucker* printer* kalender* calendar* laufwerk* drive battery* akku*
        scanner*""",
    "press releases": """pressemitteilung* mitteilung* presse* press release* releases
        veroeffentlich* publish* portal* redaktion* editorial* abmahnung* journalist*
        media medien* distribut* verteil*""",
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


@lru_cache(maxsize=8192)
def topic_of(token: str) -> str | None:
    """The support topic of a word: "rechnungsadresse" -> "billing"."""
    if token in _EXACT:
        return _EXACT[token]
    found = _PART_RE.search(token)
    return None if found is None else _PARTS[found.group()]


# --------------------------------------------------------------------------- cue phrases


def _weighted(table: Mapping[float, str]) -> dict[str, float]:
    return {p.strip(): w for w, phrases in table.items() for p in phrases.split("|")}


# Phrases (folded, whole words) announcing something new, by weight in log-odds.
NEW_REQUEST_CUES = _weighted(
    {
        1.6: """eine andere sache | anderes thema | anderes anliegen | anderes problem
            | another issue | separate question | unrelated | different issue
            | on another note""",
        1.4: """weiteres problem | unabhaengig davon | noch ein anderes | another thing
            | another question | while i have you | new issue""",
        1.2: """noch eine frage | noch eine sache | und noch was | bei der gelegenheit
            | one more thing | separately | could you also | can you also""",
        1.0: """ausserdem | uebrigens | weitere frage | nebenbei | apropos | ich haette noch
            | koennen sie auch | koennten sie auch | by the way | btw""",
        0.8: "noch etwas | quick one",
        0.6: "zusaetzlich | additionally",
        0.4: "also",
    }
)
# Phrases carrying the same conversation on: still broken, status, results, disagreement.
CONTINUATION_CUES = _weighted(
    {
        1.4: "any update | any news",
        1.2: """immer noch | noch immer | nach wie vor | wie ist der stand | hat geklappt
            | funktioniert wieder | geht wieder | laeuft wieder | sehe ich anders
            | nicht einverstanden | following up | same error | same problem | works now
            | that did it | happening again | i disagree""",
        1.0: """gibt es schon | neuigkeiten | nachtrag | wie besprochen | wie gewuenscht
            | wie vorgeschlagen | gleiche fehler | gleiche meldung | follow up | as you said
            | as suggested | same thing | still""",
        0.8: """weiterhin | schon wieder | nachfrage | hier die | hier das | hier der | klappt
            | derselben | dieselbe | stimmt nicht | here is | here's | worked | fixed
            | not what""",
        0.6: """anbei | haengt an | so eine | so ein | so einen | again | sorted | tried
            | done""",
        0.4: "stand | fehlt | attached | such a",
        0.3: "wieder",
    }
)
GRATITUDE = "danke | vielen dank | thanks | thank you | cheers | perfekt | perfect | super"


def _phrases(phrases: Iterable[str]) -> re.Pattern[str]:
    alternatives = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(alternatives) + r")(?![a-z0-9])")


_NEW_RE = _phrases(NEW_REQUEST_CUES)
# "Noch eine Frage dazu", "another question about this": the cue itself says same topic.
_SAME_TOPIC_AFTER = re.compile(
    r"\W{0,3}(dazu|hierzu|diesbezueglich|about (?:this|that|it)|on (?:this|that)|related)\b"
)
_CONTINUATION_RE = _phrases(CONTINUATION_CUES)
_THANKS_RE = _phrases(p.strip() for p in GRATITUDE.split("|"))
# Generic words that also turn up in a fresh problem report ("card payments still work"):
# half weight inside a sentence unlike the ticket.
_WEAK_IN_NEW_TEXT = _words("still again wieder weiterhin done tried fixed sorted worked")
# A problem report naming its start, or saying something fails, is typical of a fresh
# problem when it is about something the ticket never mentioned ("WLAN geht nicht").
_MALFUNCTION = re.compile(
    r"\b(seit (?:heute|gestern|dem|der|einer|einigen|kurzem|letzter|letztem|montag|dienstag"
    r"|mittwoch|donnerstag|freitag|\d+)|since (?:this|yesterday|last|monday|tuesday"
    r"|wednesday|thursday|friday|the|we|\d+)|(?:nicht|keine \w+|nichts) mehr|no longer"
    r"|stopped working|not working|geht (?:\w+ )?nicht|funktioniert (?:\w+ )?nicht"
    r"|(?:doesn't|does not|won't|will not) work|ausgefallen|kaputt|(?:is|ist) down)\b"
)
# Sentences of the agent's last message that ask for something.
_REQUEST = re.compile(
    r"\?|\b(bitte|please|could you|can you|let us know|send us|koennten sie|koennen sie"
    r"|sollen wir|soll|should)\b"
)
_YES_NO = re.compile(r"(ja|nein|jawohl|gerne|genau|yes|no|yep|nope|same as)\b")
# A pasted log or error output. Strong marks: timestamps, SMTP status codes, paths, stack
# frames, error words. Weak marks, which prose has too ("spf=softfail", "192.168.10.45"),
# count half.
_LOG_STRONG = re.compile(
    r"\d{1,4}[-/.]\d{1,2}[-/.]\d{2,4}[ T]\d{1,2}:\d{2}|\[\d{1,2}-\w{3}-\d{4}|\d{2}:\d{2}:\d{2}"
    r"|\b[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b|\bsaid: \d{3}\b"
    r"|(?:/[\w.@-]+){3,}|\bat \S+\(|#\d+ \S|\bline \d+|0x[0-9a-f]{4,}|event id"
    r"|exception|stack trace|fatal error|uncaught|\berror code\b",
    re.IGNORECASE,
)
_LOG_WEAK = re.compile(r"\w+=\w+|\b\d{1,3}(?:\.\d{1,3}){3}\b")


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Vocabulary:
    """What the ticket (subject and history) has talked about."""

    stems: frozenset[str]
    grams: frozenset[str]
    topics: frozenset[str]

    def knows(self, token: str) -> bool:
        """The ticket has this word, an inflection or a synonym of it; or a ticket compound
        starts or ends with it ("Mail" in "Mailzustellung", "Meldung" in "Fehlermeldung"); or
        it is long and shares most of its 4-grams or a 9-letter part with the ticket
        ("Mailzustellung" after "Zustellung der Mails", "Erinnerungsmail" after
        "Passworterinnerung")."""
        root = stem(token)
        if root in self.stems:
            return True
        if len(root) >= 4 and head_grams(root) <= self.grams:
            return True
        if len(token) >= 5 and tail_grams(token) <= self.grams:
            return True
        return len(token) >= 8 and self._shares_part(token)

    def _shares_part(self, token: str) -> bool:
        padded = f"_{token}_"
        present = [padded[i : i + 4] in self.grams for i in range(len(padded) - 3)]
        if sum(present) >= 0.7 * len(present):
            return True
        run = longest = 0
        for hit in present:
            run = run + 1 if hit else 0
            longest = max(longest, run)
        return longest >= 6


def vocabulary(texts: Iterable[str]) -> Vocabulary:
    tokens = {t for text in texts for t in content_tokens(text)}
    return Vocabulary(
        stems=frozenset(stem(t) for t in tokens),
        grams=frozenset().union(*(grams(t) for t in tokens)),
        topics=frozenset(t for t in map(topic_of, tokens) if t is not None),
    )


@dataclass(frozen=True)
class Part:
    """One sentence of the reply, judged against the ticket."""

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
    answers: str  # the agent's question or request the reply takes up, or ""
    foreign_topics: Mapping[str, tuple[str, ...]]  # topics the ticket never touched -> words
    own_topics: Mapping[str, tuple[str, ...]]  # topics shared with the ticket -> words
    closed_days: float | None

    def novel_parts(self, limit: float, min_words: int) -> list[Part]:
        return [p for p in self.parts if len(p.tokens) >= min_words and p.known <= limit]

    def part_at(self, position: int) -> Part | None:
        """The sentence holding a position of `prose`."""
        offset = 0
        for part in self.parts:
            folded = fold(part.text)
            found = self.prose.find(folded, offset)
            if found < 0:
                continue
            if position < found + len(folded):
                return part if position >= found else None
            offset = found + len(folded)
        return None

    def novel_at(self, position: int, limit: float = 0.3, min_words: int = 3) -> bool:
        """Is the sentence at `position` unlike the ticket? A cue standing alone
        ("Außerdem:") is judged by the sentence after it."""
        part = self.part_at(position)
        if part is not None and len(part.tokens) < min(2, min_words):
            following = self.parts.index(part) + 1
            part = self.parts[following] if following < len(self.parts) else None
        return part is not None and len(part.tokens) >= min_words and part.known <= limit


def _ticket_texts(subject: str, history: Sequence[str]) -> list[str]:
    texts = [subject]
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
    """A subject without reply prefixes and ticket tags: "AW: [MT#10017] WLAN" -> "WLAN"."""
    return normalise(_TAG.sub(" ", subject), "MT")


def _split_log(text: str) -> tuple[str, int]:
    """The prose of a reply and how many of its lines look like pasted log output."""
    prose: list[str] = []
    log = 0
    for line in text.split("\n"):
        marks = len(_LOG_STRONG.findall(line)) + 0.5 * len(_LOG_WEAK.findall(line))
        if marks >= (1 if len(line) >= 40 else 2):
            log += 1
        else:
            prose.append(line)
    return "\n".join(prose), log


def _part(sentence: str, vocab: Vocabulary) -> Part:
    tokens = tuple(content_tokens(sentence))
    known = sum(vocab.knows(t) for t in tokens) / len(tokens) if tokens else 1.0
    return Part(sentence.strip(), tokens, known, sentence.rstrip().endswith("?"))


def _topics(tokens: Iterable[str], vocab: Vocabulary) -> tuple[dict[str, tuple[str, ...]], ...]:
    """The reply's topic words: on a topic the ticket never touched (foreign; only words the
    ticket does not know count) or on one of the ticket's own topics."""
    foreign: dict[str, list[str]] = {}
    own: dict[str, list[str]] = {}
    for token in tokens:
        topic = topic_of(token)
        if topic is not None:
            side = own if topic in vocab.topics or vocab.knows(token) else foreign
            side.setdefault(topic, []).append(token)
    return (
        {k: tuple(dict.fromkeys(v)) for k, v in foreign.items()},
        {k: tuple(dict.fromkeys(v)) for k, v in own.items()},
    )


def _answers(parts: Sequence[Part], last_message: str) -> str:
    """The question or request of the last history message (normally the agent's) that the
    reply's opening sentence takes up, by a yes/no or by repeating one of its words."""
    opening = next((p for p in parts if p.tokens or _YES_NO.match(fold(p.text))), None)
    if opening is None:
        return ""
    said = {stem(t) for t in opening.tokens}
    for sentence in _SENTENCE.split(last_message):
        request = _REQUEST.search(fold(sentence))
        if request is None:
            continue
        shared = len(said & {stem(t) for t in content_tokens(sentence)})
        enough = 1 if request.group() == "?" or len(said) <= 4 else 2
        if _YES_NO.match(fold(opening.text)) or shared >= enough:
            return sentence.strip()
    return ""


def analyse(
    ticket_subject: str,
    ticket_history: Sequence[str],
    new_subject: str,
    new_visible_text: str,
    closed_for: timedelta | None = None,
) -> Analysis:
    vocab = vocabulary(_ticket_texts(ticket_subject, ticket_history))
    prose, log_lines = _split_log(new_visible_text)
    parts = tuple(p for s in _SENTENCE.split(prose) if (p := _part(s, vocab)).text)
    title = _title(new_subject)
    unchanged = fold(title) in ("", "(no subject)", fold(_title(ticket_subject)))
    changed = "" if unchanged else title
    subject = _part(changed, vocab)
    words = sum(len(p.tokens) for p in parts)
    foreign, own = _topics([t for p in (*parts, subject) for t in p.tokens], vocab)
    return Analysis(
        parts=parts,
        similarity=sum(p.known * len(p.tokens) for p in parts) / words if words else 1.0,
        words=words,
        log_lines=log_lines,
        prose=fold(prose),
        subject=changed,
        subject_known=subject.known,
        answers=_answers(parts, ticket_history[-1] if ticket_history else ""),
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


def lexical_similarity(a: Analysis) -> Finding | None:
    """Share of the reply's words (or inflections, compound parts) found in the ticket."""
    if a.words == 0:
        return None
    weight = 5.0 * (0.35 - a.similarity) * min(1.0, a.words / 6)
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
    return Finding(0.3 + 2.0 * share, f'a part unlike the ticket: "{_clip(novel[0].text)}"')


def topic_shift(a: Analysis) -> Finding | None:
    """Support topics (billing, Wi-Fi, ...) the reply talks about and the ticket never did."""
    foreign = sum(len(v) for v in a.foreign_topics.values())
    own = sum(len(v) for v in a.own_topics.values())
    if foreign == 0:
        if own == 0:
            return None
        return Finding(-0.6, f"stays on the ticket's topic ({', '.join(a.own_topics)})")
    topic, words = max(a.foreign_topics.items(), key=lambda item: len(item[1]))
    weight = min(2.0, 0.8 * foreign) * foreign / (foreign + own)
    return Finding(weight, f'talks about {topic} ("{", ".join(words[:3])}"), the ticket does not')


def subject_change(a: Analysis) -> Finding | None:
    if not a.subject:
        return None
    if a.subject_known < 0.34:
        return Finding(1.5, f'new subject "{a.subject}" unlike the ticket')
    return Finding(-0.5, f'changed subject "{a.subject}" stays on the ticket\'s topic')


def _cue_credit(a: Analysis, position: int, weight: float) -> float:
    """Full weight before text unlike the ticket. Otherwise "außerdem" or "by the way" most
    likely adds a detail (0.3), while an explicit "eine andere Sache" or "unrelated" still
    declares another matter (0.7)."""
    if a.novel_at(position):
        return 1.0
    return 0.7 if weight >= 1.4 else 0.3


def new_request_cue(a: Analysis) -> Finding | None:
    """ "außerdem", "by the way" ...: strong before text unlike the ticket, weak otherwise."""
    best: Finding | None = None
    for match in _NEW_RE.finditer(a.prose):
        cue = match.group(1)
        if _SAME_TOPIC_AFTER.match(a.prose, match.end()):
            continue
        weight = NEW_REQUEST_CUES[cue] * _cue_credit(a, match.start(), NEW_REQUEST_CUES[cue])
        if best is None or weight > best.weight:
            best = Finding(weight, f'new-request cue "{cue}"')
    return best


def continuation_cue(a: Analysis) -> Finding | None:
    """ "immer noch", "any update", "here is" ...: the reply carries the ticket on."""
    cues: dict[str, float] = {}
    for match in _CONTINUATION_RE.finditer(a.prose):
        cue = match.group(1)
        weak = cue in _WEAK_IN_NEW_TEXT and a.novel_at(match.start(), 0.2)
        weight = CONTINUATION_CUES[cue] * (0.5 if weak else 1.0)
        cues[cue] = max(weight, cues.get(cue, 0.0))
    if not cues:
        return None
    named = ", ".join(f'"{c}"' for c in list(cues)[:3])
    return Finding(-min(2.0, sum(cues.values())), f"continuation cue {named}")


def answers_agent(a: Analysis) -> Finding | None:
    if not a.answers:
        return None
    return Finding(-1.2, f'answers the agent\'s question "{_clip(a.answers)}"')


def problem_report(a: Analysis) -> Finding | None:
    """ "seit gestern", "geht nicht", "no longer" in a sentence unlike the ticket."""
    for match in _MALFUNCTION.finditer(a.prose):
        if a.novel_at(match.start(), min_words=1):
            return Finding(0.6, f'reports a new malfunction ("{match.group(1)}")')
    return None


def gratitude(a: Analysis) -> Finding | None:
    found = _THANKS_RE.search(a.prose)
    return None if found is None else Finding(-0.5, f'thanks ("{found.group(1)}")')


def new_question(a: Analysis) -> Finding | None:
    questions = [p for p in a.novel_parts(limit=0.2, min_words=3) if p.question]
    if not questions:
        return None
    return Finding(0.8, f'asks a question unlike the ticket: "{_clip(questions[0].text)}"')


def length(a: Analysis) -> Finding | None:
    """Short replies are acknowledgements ("Danke!", "ok", "any update?"), never a new topic;
    unless they are mostly about a topic the ticket never touched, or report a malfunction of
    one ("WLAN geht nicht")."""
    foreign = sum(len(words) for words in a.foreign_topics.values())
    if a.words > 8 or 2 * foreign >= max(a.words, 1):
        return None
    if foreign and problem_report(a) is not None:
        return None
    words = "word" if a.words == 1 else "words"
    if a.words <= 2:
        return Finding(-3.0, f"very short reply ({a.words} {words})")
    if a.words <= 5:
        return Finding(-1.2, f"short reply ({a.words} {words})")
    return Finding(-0.5, f"short reply ({a.words} {words})")


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


# The evidence table: each row adds its log-odds to BIAS; the score is the logistic of the sum.
BIAS = -0.7
EVIDENCE: Sequence[tuple[str, Callable[[Analysis], Finding | None]]] = (
    ("lexical similarity", lexical_similarity),
    ("novel part", novel_part),
    ("topic shift", topic_shift),
    ("subject change", subject_change),
    ("new-request cue", new_request_cue),
    ("continuation cue", continuation_cue),
    ("answers the agent", answers_agent),
    ("problem report", problem_report),
    ("gratitude", gratitude),
    ("new question", new_question),
    ("length", length),
    ("pasted log", pasted_log),
    ("time since closed", time_since_closed),
)


def findings(a: Analysis) -> list[tuple[str, Finding]]:
    """(evidence name, finding) for every row of the table that has something to say."""
    return [(name, found) for name, judge in EVIDENCE if (found := judge(a)) is not None]


def verdict(found: Sequence[tuple[str, Finding]], threshold: float) -> DriftVerdict:
    """The score from the evidence; reasons: what speaks for the verdict, strongest first,
    then what speaks against it."""
    total = BIAS + sum(f.weight for _, f in found)
    score = 1.0 / (1.0 + math.exp(-total))
    new_topic = score >= threshold
    ranked = sorted(
        (f for _, f in found), key=lambda f: ((f.weight > 0) != new_topic, -abs(f.weight))
    )
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
    return verdict(findings(a), threshold)


# --------------------------------------------------------------------------- JSON contract


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
            kind = type(item).__name__
            raise ValueError(f'"ticket_history"[{index}] must be a string, not {kind}')
    return value


def _closed_for(case: Mapping[str, object]) -> timedelta | None:
    value = case.get("closed_days_ago")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f'"closed_days_ago" must be a number >= 0 or null, not {value!r}')
    return timedelta(days=value)


def detect_raw(case: Mapping[str, object], threshold: float = DEFAULT_THRESHOLD) -> DriftVerdict:
    """The JSON contract. `new_message` is the raw body: quotes and signature are removed here
    with ingest's splitter. Optional "closed_days_ago": days since the ticket was closed.
    Other keys are ignored, so labelled cases can be fed as they are."""
    if not isinstance(case, Mapping):
        raise ValueError(f"a drift case must be a JSON object, not {type(case).__name__}")
    history = _history(case)
    ticket_subject, new_subject = _string(case, "ticket_subject"), _string(case, "new_subject")
    visible = split_reply(_string(case, "new_message")).visible
    closed_for = _closed_for(case)
    return detect(
        ticket_subject, history, new_subject, visible, closed_for=closed_for, threshold=threshold
    )


def drift_command(stdin: TextIO, stdout: TextIO, threshold: float) -> int:
    """`mailtick drift --json`: one case as JSON on stdin, the verdict as JSON on stdout.
    Bad input: a message on stderr, exit status 2."""
    try:
        verdict_ = detect_raw(json.loads(stdin.read()), threshold)
    except json.JSONDecodeError as error:
        print(f"mailtick drift: input is not valid JSON: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"mailtick drift: {error}", file=sys.stderr)
        return 2
    json.dump(verdict_.to_json(), stdout, ensure_ascii=False)
    stdout.write("\n")
    return 0
