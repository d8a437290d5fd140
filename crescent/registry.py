"""Extension points: a registry per swappable part, keyed by the config value that selects it.

Crescent's own engines, vote rules, answer formats (a domain's answer semantics), fine-tuning
objectives, dedup embedders and stages register here exactly as outside code does, with a
decorator:

    from crescent.registry import VOTE_RULES

    @dataclass
    class UnanimousOptions:
        at_least: int = 3

    @VOTE_RULES.register("unanimous", options=UnanimousOptions)
    def unanimous(answers, responses, cfg, seed, answer_format): ...  # reads cfg.options.at_least

and are then selected by one override (`voting.rule=unanimous`). A component's own settings are
its `options` dataclass: they live in the `options` node of its config group
(`voting.options.at_least=4`), filled with the dataclass's defaults and checked against it (types,
unknown keys) before any stage runs; a field with `metadata={"operational": True}` stays out of
cache keys (crescent/config.py). A stage registers its module, `STAGES.register("filter",
options=...)(sys.modules[__name__])`; its own settings live in `stage_options.filter`.

Outside modules are imported before the config is checked: those named in the `plugins` config
key, and every module an installed package declares under the `crescent.plugins` entry-point
group (docs/plugins.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from crescent.errors import CrescentError, did_you_mean

ENTRY_POINT_GROUP = "crescent.plugins"


class Registry:
    """Name -> implementation for one extension point, selected by the config key `key`.

    Crescent's own entries are listed as name -> module and imported when first asked for,
    so that checking a config imports no backend, torch or Lightning."""

    def __init__(self, what: str, key: str, builtins: dict[str, str],
                 requires: tuple[str, ...] = (), builtin_options: dict[str, str] | None = None):
        self.what, self.key = what, key
        self.requires = requires  # what an entry must have: checked when it is registered
        # a built-in name -> "module:Dataclass" of its options, in a module light to import:
        # its settings are checked and filled without importing the entry's backend
        self._builtin_options = dict(builtin_options or {})
        self._builtins = builtins  # name -> the module whose import registers it
        self._entries: dict[str, Any] = {}
        self._options: dict[str, type] = {}  # name -> the dataclass of its own settings

    def register(self, name: str, options: type | None = None) -> Callable[[Any], Any]:
        """Decorator: make the decorated class or function the `name` entry; `options`, a
        dataclass, declares the settings of its own (the group's `options` node)."""
        def add(obj):
            missing = [a for a in self.requires if not callable(getattr(obj, a, None))]
            if not callable(obj) and not self.requires or missing:
                lacks = ", ".join(missing) if missing else "a call"
                raise CrescentError(f"{self.key}: {self.what} {name!r} ({_where(obj)}) is not "
                                    f"one: it lacks {lacks}")
            if name in self._entries and self._entries[name] is not obj:
                raise CrescentError(f"{self.key}: two {self.what}s registered as {name!r}: "
                                    f"{_where(self._entries[name])} and {_where(obj)}")
            self._entries[name] = obj
            if options is not None:
                self._options[name] = options
            return obj

        return add

    @property
    def options_key(self) -> str:
        """Where the selected component's own settings live: `<group>.options`."""
        return f"{self.key.rsplit('.', 1)[0]}.options"

    def options(self, name: str, given: Any, where: str | None = None) -> dict:
        """`given` (the options node at `where`, default `options_key`) checked against
        `name`'s options dataclass and filled with its defaults; one line naming the key and
        what is wrong otherwise."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        where = where or self.options_key
        if given is not None and not (OmegaConf.is_dict(given) or isinstance(given, dict)):
            raise CrescentError(f"{where}={given}: expected option names and their values "
                                f"(+{where}.NAME=VALUE)")
        given = OmegaConf.to_container(given, resolve=True) if OmegaConf.is_config(given) \
            else dict(given or {})
        schema = self.options_schema(name)
        if not given and schema is None and name not in self._entries:
            return {}  # nothing to check, no defaults to fill (and no backend to import)
        if schema is None:
            self.get(name)  # registers its options
            schema = self._options.get(name)
        if schema is None:
            if given:
                raise CrescentError(f"{where}: {self.what} {name!r} takes no options "
                                    f"(given: {', '.join(map(str, given))})")
            return {}
        known = OmegaConf.structured(schema)
        for key in given:
            if key not in known:
                raise CrescentError(
                    f"{where}.{key}: not an option of {self.what} {name!r}"
                    f"{did_you_mean(key, known)}; "
                    f"its options: {', '.join(known)}")
        try:
            merged = OmegaConf.merge(known, given)
            OmegaConf.to_object(merged)  # the dataclass's __post_init__ checks its ranges
            return OmegaConf.to_container(merged, resolve=True)
        except OmegaConfBaseException as e:
            message = str(getattr(e, "msg", e)).splitlines()[0]
            raise CrescentError(f"{where}.{e.key}: {message}") from None
        except ValueError as e:  # raised by the dataclass's __post_init__
            said = str(e)  # "name=value: expected ..." names the option
            raise CrescentError(f"{where}.{said}" if said.split("=")[0] in known
                                else f"{where}: {said}") from None

    def options_schema(self, name: str) -> type | None:
        """The options dataclass `name` registered, or a built-in declares (None: it takes
        none, or is a built-in not imported yet that declares none)."""
        if name not in self._options and name in self._builtin_options:
            module, _, attr = self._builtin_options[name].partition(":")
            self._options[name] = getattr(importlib.import_module(module), attr)
        return self._options.get(name)

    def builtin(self, name: str) -> bool:
        """Whether `name` is one of crescent's own entries."""
        return name in self._builtins

    def loaded(self, name: str) -> Any:
        """The entry `name` if it is imported already (a plug-in, or a built-in some stage
        used), else None: for what can be known without importing a backend."""
        return self._entries.get(name)

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


# Each registry says what its entries must have (`requires`): an entry that lacks it fails
# where it is registered, not when a stage first calls it.
ENGINES = Registry("engine", "engine.name", {
    "vllm": "crescent.engines.vllm_offline", "ray_vllm": "crescent.engines.ray_vllm",
    "hf": "crescent.engines.hf", "openai": "crescent.engines.served"},
    requires=("open", "chat", "lm_eval_model"),
    builtin_options={"vllm": "crescent.options:VLLMOptions",
                     "ray_vllm": "crescent.options:VLLMOptions",
                     "openai": "crescent.options:OpenAIOptions"})
VOTE_RULES = Registry("vote rule", "voting.rule", {"majority": "crescent.methods.voting",
                                                   "execution": "crescent.methods.execution"})
ANSWER_FORMATS = Registry("answer format", "domain.answer_type", {
    "math": "crescent.domains.math", "text": "crescent.domains.text",
    "code": "crescent.domains.code"}, requires=("extract", "equal"))
OBJECTIVES = Registry("objective", "finetune.objective", {"sft": "crescent.objectives.sft",
                                                          "dpo": "crescent.objectives.dpo"},
                      requires=("load_examples", "data_module", "compute_loss"),
                      builtin_options={"dpo": "crescent.options:DPOOptions"})
EMBEDDERS = Registry("dedup method", "dedup.method", {
    name: "crescent.methods.dedup" for name in ("minilm", "self", "minhash", "none")},
    builtin_options={"minhash": "crescent.options:MinHashOptions",
                     "self": "crescent.options:SelfOptions"})
# Components whose own settings sit in their group's `options` node, checked with the config.
COMPONENTS = (ENGINES, VOTE_RULES, ANSWER_FORMATS, OBJECTIVES, EMBEDDERS)


class StageRegistry(Registry):
    """Stages are modules (a `STAGE` declaration and `run`, crescent/cache.py): a built-in one
    is its module, imported when first asked for; outside code registers its own module. A
    stage's own settings are `stage_options.<name>`."""

    def options_key_of(self, name: str) -> str:
        return f"stage_options.{name}"

    def check(self, name: str) -> None:
        if name not in self._entries and name not in self._builtins:
            raise CrescentError(f"stages: unknown stage {name!r} (known: "
                                f"{', '.join(self.in_order())})")

    def get(self, name: str) -> Any:
        self.check(name)
        if name not in self._entries:  # a built-in stage is its module
            self._entries[name] = importlib.import_module(self._builtins[name])
        return self._entries[name]

    def in_order(self) -> list[str]:
        """The built-in stages in data-flow order, then the registered ones."""
        return [*self._builtins, *(name for name in self._entries if name not in self._builtins)]


# The stage table: name -> the module that declares and runs it.
STAGES = StageRegistry("stage", "stages", {
    name: f"crescent.stages.{name}" for name in ("questions", "answers", "audit", "finetune",
                                                  "evaluate")}, requires=("run",))


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
