"""Plug-ins from outside the package, each one file plus config: an objective, a stage, a domain
and an engine with settings of their own (tests/test_components.py runs them end to end)."""
