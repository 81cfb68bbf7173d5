"""De-identification: DICOM PS3.15 (:mod:`~medray.privacy.ps315`; its Clean Pixel Data OCR gate,
:mod:`~medray.privacy.pixels`), EMR tables (:mod:`~medray.privacy.emr`)
and the keyed pseudonyms and date shifts both share (:mod:`~medray.privacy.pseudonym`).
"""
