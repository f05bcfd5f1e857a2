"""Topic drift, its words: stop words, stems, synonyms, topics, cue phrases. Touches nothing.

The lexicon the drift scorer (drift.py) reads a reply with. Words are folded (umlauts
spelled out, lower case) and stemmed before they are compared.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

# --------------------------------------------------------------------------- words


def _words(text: str) -> frozenset[str]:
    """A word list written as one string."""
    return frozenset(text.split())


_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "é": "e", "\u2019": "'"})
_TOKEN = re.compile(r"[a-z0-9]+")
_JOINED = re.compile(r"\b(wi|e)-(fi|mail)")  # "Wi-Fi", "E-Mail": one word each
SENTENCE = re.compile(r"(?<=[^\d\s][.!?])\s+|(?<=\?)\s+|\s*\n\s*|(?<=\w):\s+(?=\w)")
TAG = re.compile(r"\[\s*[A-Za-z][A-Za-z0-9]{0,9}\s*#\s*\d{2,12}\s*\]")

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


NEW_RE = _phrases(NEW_REQUEST_CUES)
# "Noch eine Frage dazu", "another question about this": the cue itself says same topic.
SAME_TOPIC_AFTER = re.compile(
    r"\W{0,3}(dazu|hierzu|diesbezueglich|about (?:this|that|it)|on (?:this|that)|related)\b"
)
CONTINUATION_RE = _phrases(CONTINUATION_CUES)
THANKS_RE = _phrases(p.strip() for p in GRATITUDE.split("|"))
# Generic words that also turn up in a fresh problem report ("card payments still work"):
# half weight inside a sentence unlike the ticket.
WEAK_IN_NEW_TEXT = _words("still again wieder weiterhin done tried fixed sorted worked")
# A problem report naming its start, or saying something fails, is typical of a fresh
# problem when it is about something the ticket never mentioned ("WLAN geht nicht").
MALFUNCTION = re.compile(
    r"\b(seit (?:heute|gestern|dem|der|einer|einigen|kurzem|letzter|letztem|montag|dienstag"
    r"|mittwoch|donnerstag|freitag|\d+)|since (?:this|yesterday|last|monday|tuesday"
    r"|wednesday|thursday|friday|the|we|\d+)|(?:nicht|keine \w+|nichts) mehr|no longer"
    r"|stopped working|not working|geht (?:\w+ )?nicht|funktioniert (?:\w+ )?nicht"
    r"|(?:doesn't|does not|won't|will not) work|ausgefallen|kaputt|(?:is|ist) down)\b"
)
# Sentences of the agent's last message that ask for something.
REQUEST = re.compile(
    r"\?|\b(bitte|please|could you|can you|let us know|send us|koennten sie|koennen sie"
    r"|sollen wir|soll|should)\b"
)
YES_NO = re.compile(r"(ja|nein|jawohl|gerne|genau|yes|no|yep|nope|same as)\b")
# A pasted log or error output. Strong marks: timestamps, SMTP status codes, paths, stack
# frames, error words. Weak marks, which prose has too ("spf=softfail", "192.168.10.45"),
# count half.
LOG_STRONG = re.compile(
    r"\d{1,4}[-/.]\d{1,2}[-/.]\d{2,4}[ T]\d{1,2}:\d{2}|\[\d{1,2}-\w{3}-\d{4}|\d{2}:\d{2}:\d{2}"
    r"|\b[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b|\bsaid: \d{3}\b"
    r"|(?:/[\w.@-]+){3,}|\bat \S+\(|#\d+ \S|\bline \d+|0x[0-9a-f]{4,}|event id"
    r"|exception|stack trace|fatal error|uncaught|\berror code\b",
    re.IGNORECASE,
)
LOG_WEAK = re.compile(r"\w+=\w+|\b\d{1,3}(?:\.\d{1,3}){3}\b")
