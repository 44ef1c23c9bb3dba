"""Adapter methods: each module of this package defines a :class:`~.base.Method` and registers it.

Importing the package imports every module in it (found with pkgutil, no hand-kept list), so every built-in method
is registered (:mod:`graphpeft.rules.registry`) once ``graphpeft`` is imported; a new method is one new file here.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
