"""wakemodel: ship-wake keypoint detection in Sentinel-2 images.

The package finds the wake vertex (the vessel) and the far ends of the wake
components in a Sentinel-2 chip, and derives the vessel's heading. Public names
are loaded lazily (PEP 562), so ``import wakemodel`` stays light and heavy
dependencies (torch, Lightning) load only in the modules that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "haversine_vectorized": "wakemodel.geo",
    "find_closest_platform": "wakemodel.geo",
    "PlatformIndex": "wakemodel.geo",
    "WakeModelError": "wakemodel.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wakemodel' has no attribute {name!r}")
