"""Model definitions shared by training and serving: each model is defined once, here."""

from medray.models.nodule import DEFAULT_INPUT_SPEC, NoduleNet, NoduleNetConfig, build_model

__all__ = ["DEFAULT_INPUT_SPEC", "NoduleNet", "NoduleNetConfig", "build_model"]
