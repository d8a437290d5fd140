"""Extension points: a registry per swappable part, keyed by the config value that selects it.

Crescent's own engines, vote rules, answer formats (a domain's answer semantics), fine-tuning
objectives and dedup embedders register here exactly as outside code does, with a decorator:

    from crescent.registry import VOTE_RULES

    @VOTE_RULES.register("unanimous")
    def unanimous(answers, responses, cfg, seed, answer_format): ...

and are then selected by one override (`voting.rule=unanimous`). Outside modules are imported
before the config is checked: those named in the `plugins` config key, and every module an
installed package declares under the `crescent.plugins` entry-point group (README, "Plug-ins").
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from crescent.errors import CrescentError

ENTRY_POINT_GROUP = "crescent.plugins"


class Registry:
    """Name -> implementation for one extension point, selected by the config key `key`.

    Crescent's own entries are listed as name -> module and imported when first asked for,
    so that checking a config imports no backend, torch or Lightning."""

    def __init__(self, what: str, key: str, builtins: dict[str, str]):
        self.what, self.key = what, key
        self._builtins = builtins  # name -> the module whose import registers it
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: make the decorated class or function the `name` entry."""
        def add(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise CrescentError(f"{self.key}: two {self.what}s registered as {name!r}: "
                                    f"{_where(self._entries[name])} and {_where(obj)}")
            self._entries[name] = obj
            return obj

        return add

    def check(self, name: str) -> None:
        """A one-line error unless `name` is registered (or built in)."""
        if name not in self._entries and name not in self._builtins:
            raise CrescentError(
                f"{self.key}={name!r}: no such {self.what} (known: {', '.join(self.names())}; "
                f"a plug-in registers more: the `plugins` key)")

    def get(self, name: str) -> Any:
        self.check(name)
        if name not in self._entries:
            importlib.import_module(self._builtins[name])
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._builtins})


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


ENGINES = Registry("engine", "engine.name", {
    "vllm": "crescent.engines.vllm_offline", "ray_vllm": "crescent.engines.ray_vllm",
    "hf": "crescent.engines.hf", "openai": "crescent.engines.served"})
VOTE_RULES = Registry("vote rule", "voting.rule", {"majority": "crescent.methods.voting"})
ANSWER_FORMATS = Registry("answer format", "domain.answer_type", {
    "math": "crescent.domains.math", "text": "crescent.domains.text"})
OBJECTIVES = Registry("objective", "finetune.objective", {"sft": "crescent.objectives.sft",
                                                          "dpo": "crescent.objectives.dpo"})
EMBEDDERS = Registry("dedup method", "dedup.method", {
    name: "crescent.methods.dedup" for name in ("minilm", "self", "minhash", "none")})


def load_entry_points() -> None:
    """Import every module installed packages declare under the `crescent.plugins` entry-point
    group: before Hydra composes the config, so that config nodes they store are found."""
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import `modules` (dotted names, found from the working directory too), so that their
    registrations exist."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `plugins=[my_rule]` beside the run, as `python -m` finds it
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name and not name.startswith(f"{e.name}."):
                raise  # the plug-in itself imports something missing: its traceback says what
            raise CrescentError(f"plugins: no module named {name!r} (importable from "
                                f"{os.getcwd()} or PYTHONPATH)") from None
