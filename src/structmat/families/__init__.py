"""Structured matrix families: one module per family, each registered with the registry.

Every module in this package is imported here, so that registering a new family means adding
one file (DESIGN.md §3).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
