"""Pluggable scheduling policies. `POLICIES` maps a policy name (policy.name in the config) to its class.

Every module in this package is imported here, so a new policy is just a new module that adds its class
to POLICIES (see policies/base.py and docs/policies.md).
"""
import importlib
import pkgutil

from policies.base import POLICIES, Batch, Policy

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["POLICIES", "Batch", "Policy"]
