"""medray.privacy.notes on the synthetic notes of medray.data.notes: recall of the planted PHI under
both profiles, what dates become, what is left alone (no cluster)."""

import re
from collections import Counter
from datetime import date, timedelta

import numpy as np
import pytest

from medray.data.anatomy import Geometry
from medray.data.emr_tables import draw_emr
from medray.data.notes import PlantedPhi, draw_notes
from medray.data.people import draw_patients
from medray.errors import ConfigError
from medray.privacy.notes import ENTITIES, NoteScrubber, name_words

PATIENTS = 40
GOAL = 0.99


@pytest.fixture(scope="module")
def notes():
    rng = np.random.default_rng(16)
    cohort = draw_patients(rng, PATIENTS, Geometry(64, 10, 3.0, 5.0), 0.5)
    return cohort, draw_notes(np.random.default_rng(161), cohort, draw_emr(rng, cohort).encounters)


@pytest.fixture(scope="module")
def scrubber(notes):
    """As the EMR pipeline builds it: the cohort's name columns (patients' names, note authors)."""
    cohort, synthetic = notes
    return NoteScrubber(name_words([p.first for p in cohort] + [p.last for p in cohort]
                                   + synthetic.table["author"].to_pylist()))


def left_in(planted: PlantedPhi, text: str) -> bool:
    """Whether the planted identifier is still in ``text`` as a whole word ("93" -> "90+" is removed)."""
    tail = r"(?![\w+])" if planted.kind == "AGE_OVER_89" else r"(?!\w)"
    return re.search(r"(?<!\w)" + re.escape(planted.text) + tail, text) is not None


def recall(scrubbed: dict[str, str], planted: tuple[PlantedPhi, ...]) -> tuple[float, Counter]:
    missed = [p for p in planted if left_in(p, scrubbed[p.note_id])]
    return 1 - len(missed) / len(planted), Counter(p.kind for p in missed)


@pytest.mark.parametrize("profile", ["safe_harbor", "longitudinal"])
def test_at_least_99_percent_of_planted_phi_is_removed(notes, scrubber, profile):
    _, synthetic = notes
    table = synthetic.table
    kinds = Counter(p.kind for p in synthetic.planted)
    assert set(kinds) == set(ENTITIES) and len(synthetic.planted) > 1000  # every kind is planted
    # The measure itself works: everything is "left in" the raw notes.
    raw = dict(zip(table["note_id"].to_pylist(), table["text"].to_pylist()))
    assert recall(raw, synthetic.planted)[0] == 0.0
    scrubbed = {note_id: scrubber.scrub(text, profile=profile, shift_days=-40).text for note_id, text in raw.items()}
    figure, missed = recall(scrubbed, synthetic.planted)
    assert figure >= GOAL, f"recall {figure:.4f}, missed by kind: {dict(missed)}"


def test_clinical_text_is_left_alone(notes, scrubber):
    """Precision where it matters: every clinical sentence between the identifiers comes out intact."""
    from medray.data.notes import _CLINICAL

    _, synthetic = notes
    for text in synthetic.table["text"].to_pylist()[:60]:
        out = scrubber.scrub(text, profile="safe_harbor").text
        for sentence in _CLINICAL:
            assert (sentence in text) == (sentence in out), sentence


def test_dates_become_the_year_or_move_by_the_patients_shift(scrubber):
    text = "Seen 2021-03-14, again 3/4/2021, 03/04/21, March 4, 2021, 4 Mar 2021, 3-4-2021, in March 2021, on March 4."
    safe = scrubber.scrub(text, profile="safe_harbor").text
    assert safe == "Seen 2021, again 2021, 2021, 2021, 2021, 2021, in 2021, on [DATE]."
    shifted = scrubber.scrub(text, profile="longitudinal", shift_days=-10).text
    d = date(2021, 3, 4) - timedelta(days=10)
    assert shifted == (f"Seen {date(2021, 3, 14) - timedelta(days=10)}, again 2/22/2021, 2/22/21, February 22, 2021, "
                       "22 February 2021, 2-22-2021, in March 2021, on February 22.")
    assert d == date(2021, 2, 22)
    assert scrubber.scrub("on 2/30/2021", profile="longitudinal", shift_days=-1).text == "on [DATE]"


def test_identifiers_become_placeholders_and_old_ages_90_plus(scrubber):
    text = ("Kowalski, Dmitri (MRN1234567) is a 94-year-old man. Call (617) 555-0134, fax 617.555.0199, "
            "d.k@example.com, SSN 212-45-6789, ACCT12345678, https://portal.example.org/c/1 from 10.1.2.3, "
            "12 Maple Ave, Boston, MA 02114. Seen by Dr. Zbigniewski. Aged 94.")
    out = scrubber.scrub(text, profile="safe_harbor")
    assert out.text == ("[NAME], [NAME] ([ID]) is a 90+-year-old man. Call [PHONE], fax [PHONE], [EMAIL], SSN [SSN], "
                        "[ID], [URL] from [IP], [ADDRESS], [ADDRESS] [ZIP]. Seen by Dr. [NAME]. Aged 90+.")
    assert out.found["PERSON"] == 3 and out.found["AGE_OVER_89"] == 2
    assert scrubber.scrub("A 64-year-old woman.", profile="safe_harbor").text == "A 64-year-old woman."


def test_names_outside_the_dictionaries_need_a_title_or_the_name_columns(scrubber):
    """The honest limit without a statistical model: an unlisted name in plain text stays."""
    assert scrubber.scrub("Zbigniewski was seen.", profile="safe_harbor").text == "Zbigniewski was seen."
    assert scrubber.scrub("Mrs. Zbigniewski was seen.", profile="safe_harbor").text == "Mrs. [NAME] was seen."
    listed = NoteScrubber(name_words(["Zbigniewski"]))
    assert listed.scrub("ZBIGNIEWSKI was seen.", profile="safe_harbor").text == "[NAME] was seen."


def test_bad_calls_are_refused(scrubber):
    with pytest.raises(ConfigError, match="shift_days"):
        scrubber.scrub("x", profile="longitudinal")
    with pytest.raises(ConfigError, match="unknown profile"):
        scrubber.scrub("x", profile="expert")
    info = scrubber.info()
    assert info["versions"]["presidio-analyzer"].startswith("2.2") and info["name_dictionary"]["faker en_US"] > 1000
