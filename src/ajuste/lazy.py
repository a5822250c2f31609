"""Helpers for heavy optional imports (transformers, peft, optuna): imported only where used."""

from __future__ import annotations

import os
import warnings


def quiet_transformers() -> None:
    """transformers logs loading reports and advisory warnings at import; users see our messages instead."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
