"""Who may call what, and what they did: client tokens (:mod:`~medray.security.tokens`) and the
tamper-evident audit log (:mod:`~medray.security.audit`).
"""
