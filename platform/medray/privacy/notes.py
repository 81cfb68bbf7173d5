"""Free-text clinical notes scrubbed of the HIPAA identifiers, with Microsoft Presidio.

Presidio (presidio-analyzer finds, presidio-anonymizer replaces) runs here with its **pattern and
dictionary recognisers only**: no spaCy model can be downloaded, so the NLP engine is spaCy's
blank English pipeline (a tokeniser, no statistical NER). What is found, and what it becomes:

=============== ============================================================ ====================
entity          recognisers                                                   replaced by
=============== ============================================================ ====================
``PERSON``      a dictionary (Faker's US first and last names, plus the       ``[NAME]``
                names the caller passes: the EMR's own name columns),
                matched as written in Title or UPPER case; a word after
                Dr/Mr/Mrs/Ms/Miss/Prof
``DATE``        ISO, m/d/y, m-d-y, "March 3, 2021", "3 March 2021",           the year
                "March 2021", "March 3"                                       (``safe_harbor``) or
                                                                              the date shifted by
                                                                              the patient's offset
                                                                              (``longitudinal``)
``AGE_OVER_89`` "93-year-old", "93 yo", "aged 93"                             ``90+``
``PHONE``       Presidio's PhoneRecognizer (libphonenumber) and US shapes     ``[PHONE]``
                (phone and fax alike)
``EMAIL``       Presidio's EmailRecognizer (offline public-suffix list)       ``[EMAIL]``
``US_SSN``      Presidio's UsSsnRecognizer and any ddd-dd-dddd                ``[SSN]``
``ID``          MRN, account, accession, plan, encounter numbers: letters     ``[ID]``
                then 5+ digits, any run of 6+ digits, "MRN: 1234"
``URL`` ``IP``  Presidio's UrlRecognizer, IpRecognizer                        ``[URL]`` ``[IP]``
``ADDRESS``     street ("12 Maple Ave"), "City, ST" with a US state code,     ``[ADDRESS]``
                ZIP codes                                                     ``[ZIP]``
=============== ============================================================ ====================

This covers the text-borne identifiers of Safe Harbor, 45 CFR 164.514(b)(2)(i) (names,
geographic subdivisions smaller than a state, dates and ages over 89, telephone and fax numbers,
e-mail, SSN, medical record, account and other numbers, URLs, IP addresses). Without a statistical
model, a name that is in no dictionary and follows no title is missed: pass the cohort's names
(:class:`NoteScrubber` ``names``), which the EMR pipeline takes from the columns mapped as ``name``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from medray.errors import ConfigError

__all__ = ["ENTITIES", "Scrubbed", "NoteScrubber", "common_names", "name_words", "scrubber_for", "scrubber_info"]

ENTITIES = ("PERSON", "DATE", "AGE_OVER_89", "PHONE", "EMAIL", "US_SSN", "ID", "URL", "IP", "ADDRESS", "ZIP")
_REPLACEMENT = {"PERSON": "[NAME]", "PHONE": "[PHONE]", "EMAIL": "[EMAIL]", "US_SSN": "[SSN]", "ID": "[ID]",
                "URL": "[URL]", "IP": "[IP]", "ADDRESS": "[ADDRESS]", "ZIP": "[ZIP]", "AGE_OVER_89": "90+"}
# Presidio's own recognisers report their entity names; these are ours.
_PRESIDIO_ENTITY = {"PHONE_NUMBER": "PHONE", "EMAIL_ADDRESS": "EMAIL", "IP_ADDRESS": "IP"}
_INSTALL = ("the note scrubber needs Presidio: pip install 'presidio-analyzer>=2.2,<2.3' "
            "'presidio-anonymizer>=2.2,<2.3' 'faker>=30'")
_TITLES = frozenset({"Dr", "Mr", "Mrs", "Ms", "Miss", "Prof", "MD", "PhD", "RN", "NP", "PA", "DO", "Jr", "Sr"})
_STATES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY "
           "NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR").split()
_STREET_TYPES = ("Avenue|Ave|Street|St|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
                 "Circle|Cir|Parkway|Pkwy|Highway|Hwy")
_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December")
_MONTHS = {**{m.lower(): i + 1 for i, m in enumerate(_MONTH_NAMES)},
           **{m[:3].lower(): i + 1 for i, m in enumerate(_MONTH_NAMES)}, "sept": 9}
_MON = r"(?P<mon>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<d>[0-3]?\d)(?:st|nd|rd|th)?"
# (form, regex): the forms a date is recognised in, and re-written in once shifted.
_DATE_FORMS = (
    ("iso", r"(?P<y>(?:19|20)\d\d)-(?P<m>[01]?\d)-(?P<d>[0-3]?\d)"),
    ("mdy", r"(?P<m>[01]?\d)/(?P<d>[0-3]?\d)/(?P<y>(?:19|20)?\d\d)"),
    ("mdy-dash", r"(?P<m>[01]?\d)-(?P<d>[0-3]?\d)-(?P<y>(?:19|20)\d\d)"),
    ("month-day-year", _MON + r"\s+" + _DAY + r",?\s+(?P<y>(?:19|20)\d\d)"),
    ("day-month-year", _DAY + r"\s+" + _MON + r",?\s+(?P<y>(?:19|20)\d\d)"),
    ("month-year", _MON + r",?\s+(?P<y>(?:19|20)\d\d)"),
    ("month-day", _MON + r"\s+" + _DAY),
)
_DATE_REGEX = [(form, re.compile(rx, re.IGNORECASE)) for form, rx in _DATE_FORMS]
# A year for "March 3" when it is shifted (not a leap year: 29 February has no such date).
_YEARLESS = 2001


@dataclass(frozen=True)
class Scrubbed:
    """A scrubbed note and how many of each entity were replaced (counts only, no text)."""

    text: str
    found: Counter[str]


def name_words(values: Iterable[str | None]) -> set[str]:
    """The words of person names (``"Dr. Maria Chen"`` -> Maria, Chen), titles left out."""
    words: set[str] = set()
    for value in values:
        if value:
            words.update(w for w in re.findall(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]", value)
                         if w.strip(".").title() not in _TITLES and w not in _TITLES)
    return words


@lru_cache(maxsize=1)
def common_names() -> frozenset[str]:
    """Faker's US English first names (female, male) and its 1,000 most common last names."""
    try:
        from faker.providers.person.en_US import Provider
    except ImportError:
        raise ConfigError(_INSTALL) from None
    return frozenset({*Provider.first_names_female, *Provider.first_names_male, *Provider.last_names})


def scrubber_info(own_names: int) -> dict[str, Any]:
    """What scrubs the notes, for the outputs' manifests: library versions, entities, the sizes of the
    name dictionaries (``own_names``: the words passed to :class:`NoteScrubber`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = {p: version(p) for p in ("presidio-analyzer", "presidio-anonymizer", "spacy", "faker")}
    except PackageNotFoundError:
        raise ConfigError(_INSTALL) from None
    return {"scrubber": "presidio (pattern and dictionary recognisers)", "versions": versions,
            "nlp": "spaCy blank 'en' (a tokeniser, no NER model)", "entities": list(ENTITIES),
            "name_dictionary": {"faker en_US": len(common_names()), "from name columns": own_names}}


def _parse_date(text: str) -> tuple[date | None, str, bool]:
    """(the date, its form, whether a year was written); None when it is no valid date."""
    for form, regex in _DATE_REGEX:
        m = regex.fullmatch(text.strip())
        if not m:
            continue
        parts = m.groupdict()
        month = int(parts["m"]) if parts.get("m") else _MONTHS[parts["mon"].lower()]
        year = int(parts["y"]) if parts.get("y") else _YEARLESS
        if parts.get("y") and len(parts["y"]) == 2:
            year += 2000 if year < 50 else 1900
        try:
            return date(year, month, int(parts["d"]) if parts.get("d") else 15), form, bool(parts.get("y"))
        except ValueError:
            return None, form, False
    return None, "", False


def _render_date(d: date, form: str, text: str) -> str:
    month = _MONTH_NAMES[d.month - 1]
    if form == "iso":
        return d.isoformat()
    if form in ("mdy", "mdy-dash"):
        sep = "/" if form == "mdy" else "-"
        year = f"{d.year % 100:02d}" if len(text.rsplit(sep, 1)[-1]) == 2 else str(d.year)
        return f"{d.month}{sep}{d.day}{sep}{year}"
    return {"month-day-year": f"{month} {d.day}, {d.year}", "day-month-year": f"{d.day} {month} {d.year}",
            "month-year": f"{month} {d.year}", "month-day": f"{month} {d.day}"}[form]


def _new_date(text: str, profile: str, shift_days: int | None) -> str:
    """A found date as the profile allows it: its year, or shifted; ``[DATE]`` when neither applies."""
    d, form, has_year = _parse_date(text)
    if d is None:
        return "[DATE]"
    if profile == "safe_harbor":
        return str(d.year) if has_year else "[DATE]"
    return _render_date(d + timedelta(days=shift_days), form, text)


# Words as the name dictionary looks them up: letters with inner apostrophes (O'Brien); a hyphen splits.
_WORD = re.compile(r"[A-Za-z](?:[A-Za-z']*[A-Za-z])?")


def _recognisers(names: frozenset[str]) -> list[Any]:
    from presidio_analyzer import LocalRecognizer, Pattern, PatternRecognizer, RecognizerResult
    from presidio_analyzer.predefined_recognizers import (
        EmailRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail recogniser validating domains against tldextract's bundled public-suffix
        snapshot (the default fetches the list from the internet on first use)."""

        def validate_result(self, pattern_text: str) -> bool:
            return _offline_tld().extract_str(pattern_text).fqdn != ""

    class NameDictionaryRecognizer(LocalRecognizer):
        """Words of the text looked up in a set of names (Presidio's deny-list regex is one alternation
        of every name: 7x slower per note at 20,000 names)."""

        def __init__(self, words: frozenset[str]) -> None:
            self.words = words
            super().__init__(supported_entities=["PERSON"], name="medray name dictionary")

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = []
            for m in _WORD.finditer(text):
                word, end = m.group(), m.end()
                if word not in self.words and "'" in word:  # Jane's
                    word = word.split("'", 1)[0]
                    end = m.start() + len(word)
                if word in self.words:
                    found.append(RecognizerResult("PERSON", m.start(), end, 0.85))
            return found

    case_sensitive = re.DOTALL | re.MULTILINE
    any_case = case_sensitive | re.IGNORECASE

    def patterns(entity: str, *regexes: str, score: float = 0.9, flags: int = any_case) -> Any:
        return PatternRecognizer(supported_entity=entity, name=f"medray {entity}", global_regex_flags=flags,
                                 patterns=[Pattern(f"{entity} {i}", rx, score) for i, rx in enumerate(regexes)])

    words = frozenset(form for n in names for form in (n, n.upper(), n[:1].upper() + n[1:]))
    return [
        NameDictionaryRecognizer(words),
        patterns("PERSON", r"(?<=\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+)[A-Z][A-Za-z'\-]+(?:\s+[A-Z][A-Za-z'\-]+)?",
                 flags=case_sensitive),
        patterns("DATE", *(rf"\b{rx}\b" for _, rx in _DATE_FORMS), score=0.95),
        patterns("AGE_OVER_89", r"\b(?:9\d|1[0-4]\d)(?=\s*-?\s*(?:years?|yrs?|y/?o)\b)",
                 r"(?<=\baged?\s+)(?:9\d|1[0-4]\d)\b", score=0.95),
        PhoneRecognizer(),
        patterns("PHONE", r"(?<!\d)(?:\+?1[\s.-]?)?\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}\b"),
        OfflineEmailRecognizer(),
        UsSsnRecognizer(),
        patterns("US_SSN", r"\b\d{3}-\d{2}-\d{4}\b", score=0.95),
        patterns("ID", r"\b[A-Z]{1,6}[-#]?\d{5,}\b", r"\b\d{6,}\b", r"(?<=\b(?:MRN|acct|account|accession)"
                 r"\s*(?:no\.?|number|#)?\s*[:#]?\s*)[A-Z0-9-]{3,}\b", score=0.8),
        UrlRecognizer(),
        IpRecognizer(),
        patterns("ADDRESS", rf"\b\d{{1,6}}\s+(?:[A-Z][a-z]+\s+){{1,3}}(?:{_STREET_TYPES})\b\.?",
                 rf"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+){{0,3}},\s+(?:{'|'.join(_STATES)})\b", flags=case_sensitive),
        patterns("ZIP", r"\b\d{5}(?:-\d{4})?\b", score=0.6),
    ]


@lru_cache(maxsize=1)
def _offline_tld() -> Any:
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class NoteScrubber:
    """Presidio's analyzer and anonymizer set up with the recognisers above (built once: reuse it).

    ``names``: words of person names to find besides the common ones (see :func:`name_words`).
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        try:
            import spacy
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import SpacyNlpEngine
            from presidio_anonymizer import AnonymizerEngine
        except ImportError:
            raise ConfigError(_INSTALL) from None
        own = frozenset(w for w in names if len(w) >= 2)
        engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
        engine.nlp = {"en": spacy.blank("en")}  # a tokeniser only: no model to download
        registry = RecognizerRegistry(supported_languages=["en"])
        for recogniser in _recognisers(common_names() | own):
            registry.add_recognizer(recogniser)
        self._analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
        self._anonymizer = AnonymizerEngine()
        self._own_names = len(own)

    def info(self) -> dict[str, Any]:
        """What runs (:func:`scrubber_info`)."""
        return scrubber_info(self._own_names)

    def scrub(self, text: str, *, profile: str, shift_days: int | None = None) -> Scrubbed:
        """``text`` with every entity found replaced; dates as ``profile`` says (``longitudinal``
        needs the patient's ``shift_days``, :func:`medray.privacy.pseudonym.date_shift_days`)."""
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

        if profile not in ("safe_harbor", "longitudinal"):
            raise ConfigError(f"unknown profile {profile!r}: use safe_harbor or longitudinal")
        if profile == "longitudinal" and shift_days is None:
            raise ConfigError("the longitudinal profile shifts the dates of a note: pass the patient's shift_days")
        found = self._analyzer.analyze(text, language="en")
        results = [RecognizerResult(_PRESIDIO_ENTITY.get(r.entity_type, r.entity_type), r.start, r.end, r.score)
                   for r in found]
        operators = {entity: OperatorConfig("replace", {"new_value": value}) for entity, value in _REPLACEMENT.items()}
        operators["DATE"] = OperatorConfig("custom", {"lambda": lambda s: _new_date(s, profile, shift_days)})
        out = self._anonymizer.anonymize(text, results, operators=operators)
        return Scrubbed(out.text, Counter(item.entity_type for item in out.items))


@lru_cache(maxsize=1)
def scrubber_for(names: tuple[str, ...]) -> NoteScrubber:
    """The process's scrubber for the name dictionary ``names`` (built on first use: it takes seconds)."""
    return NoteScrubber(names)
