"""Optional dependencies: a feature that needs one names the pip extra that installs it.

``pip install socklab`` installs what every command needs; a library that only one optional
feature uses is an extra (``pip install 'socklab[redis]'`` for multi-node chat). :func:`require`
turns the missing import into a one-line usage error naming that extra, raised before any work.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from socklab.core.errors import UsageError

__all__ = ["EXTRAS", "require"]

# module -> the extra in pyproject.toml that installs it
EXTRAS: dict[str, str] = {"redis": "redis"}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`UsageError`: ``FEATURE needs ...: pip install 'socklab[X]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise UsageError(f"{feature} needs the Python package {module!r}, which is not installed: "
                         f"pip install 'socklab[{extra}]'") from None
