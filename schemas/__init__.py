"""ptm's JSON Schemas (task, site, status, registry, cancel), shipped as package data.

This file makes ``ptm.schemas`` a regular package, so that ``importlib.resources`` finds the
schemas in editable installs (where a nested namespace package is not found) as well as in wheels.
"""
