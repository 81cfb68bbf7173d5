"""De-identification: DICOM PS3.15 (:mod:`~medray.privacy.ps315`), EMR tables (:mod:`~medray.privacy.emr`)
and the keyed pseudonyms and date shifts both share (:mod:`~medray.privacy.pseudonym`).
"""
