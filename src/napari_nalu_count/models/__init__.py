"""Model files: ``NAME.safetensors`` weights plus a ``NAME.json`` card.

Bundled models ship in ``models/bundled/``; user models live in :func:`user_model_dir`
(``$NALU_COUNT_MODEL_DIR`` or the platformdirs user data directory). See :mod:`.store` and
:mod:`.card`.
"""

from __future__ import annotations

from napari_nalu_count.models.card import (
    CARD_KEYS,
    FORMAT_VERSION,
    check_name,
    key_metric,
    make_card,
    validate_card,
)
from napari_nalu_count.models.store import (
    LoadedModel,
    ModelInfo,
    bundled_model_dir,
    clear_model_cache,
    describe_models,
    free_name,
    list_models,
    load_model,
    name_taken,
    read_card,
    resolve_model,
    save_model,
    user_model_dir,
)

__all__ = [
    "CARD_KEYS",
    "FORMAT_VERSION",
    "LoadedModel",
    "ModelInfo",
    "bundled_model_dir",
    "check_name",
    "clear_model_cache",
    "describe_models",
    "free_name",
    "key_metric",
    "list_models",
    "load_model",
    "make_card",
    "name_taken",
    "read_card",
    "resolve_model",
    "save_model",
    "user_model_dir",
    "validate_card",
]
