"""Command-line overrides checked against the schema before any stage: a key added with `+`
must be one the schema declares, or sit under one of its open dicts."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from crescent.config import Config
from crescent.errors import CrescentError, did_you_mean


def check_added_keys(overrides: list[str]) -> None:
    """A key added with `+` (or `++`) that the schema does not declare is refused, naming the
    nearest declared key: OmegaConf lets an added key through, where it would do nothing but
    change cache keys. Keys may be added only where the schema is open (`eval.limits`,
    `eval.models`); config groups (`+setting=...`) are not keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    conf = Path(__file__).resolve().parent / "conf"
    schema = OmegaConf.structured(Config)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not (override.is_add() or override.is_force_add()) or key.startswith("hydra") \
                or "/" in key or "@" in key or (conf / key.replace(".", "/")).is_dir():
            continue
        if not _declared(schema, key.split(".")):
            raise CrescentError(
                f"+{key}: not a config key{did_you_mean(key, _keys(schema))}; `+` adds keys "
                f"only where the schema is open: "
                f"{', '.join(open_dicts())}")


def _declared(node, parts: list[str]) -> bool:
    for i, part in enumerate(parts):
        if OmegaConf.get_type(node) is dict:
            return True  # an open dict (eval.limits): any key is its to hold
        if not OmegaConf.is_dict(node) or part not in node:
            return False
        node = node._get_node(part)
    return True


def _keys(node, prefix: str = "") -> list[str]:
    keys = []
    for name in node:
        child = node._get_node(name)
        keys.append(prefix + name)
        if OmegaConf.is_dict(child) and OmegaConf.get_type(child) is not dict:
            keys += _keys(child, f"{prefix}{name}.")
    return keys


def open_dicts() -> list[str]:
    """The schema's open dicts: keys under them are added with `+` (`eval.limits`, options)."""
    schema = OmegaConf.structured(Config)
    return [k for k in _keys(schema) if OmegaConf.get_type(OmegaConf.select(schema, k)) is dict]
