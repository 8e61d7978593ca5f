"""Detectors: a registry of families built from the `model` config section."""

from detkeeper.models.registry import Postprocess, build_model, list_models, register_model

__all__ = ["Postprocess", "build_model", "list_models", "register_model"]
