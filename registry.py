"""One registry idiom (timm's register_model / create_model) for models, attacks, defenses
and quant modes: an entry declares its parameters, their defaults and their valid domains
next to its code, and the sweep spec validates against them."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Param:
    """One parameter: its default, its type, and its valid domain (`check`, said in words by `rule`)."""
    default: Any
    type: type = float
    check: Callable[[Any], bool] | None = None
    rule: str = ""

    def validate(self, value: Any) -> Any:
        if value is None and self.default is None:      # an optional parameter left to its rule
            return None
        numeric = self.type in (int, float)
        if isinstance(value, bool) and self.type is not bool:
            raise ValueError(f"must be {self.type.__name__}, got {value!r}")
        if self.type is int and not isinstance(value, int):
            raise ValueError(f"must be int, got {value!r}")
        if numeric and not isinstance(value, (int, float)):
            raise ValueError(f"must be {self.type.__name__}, got {value!r}")
        if not numeric and not isinstance(value, self.type):
            raise ValueError(f"must be {self.type.__name__}, got {value!r}")
        value = float(value) if self.type is float else value
        if self.check is not None and not self.check(value):
            raise ValueError(f"must be {self.rule}, got {value!r}")
        return value


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any                               # the constructor, function or object registered
    params: dict[str, Param] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)   # what this kind of entry also declares

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.obj) or "").split("\n")[0]


class Registry:
    """Names to entries for one kind of thing ('model', 'attack', 'defense', 'quant mode')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, obj: Any, params: dict[str, Param] | None = None, **extras) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, obj, dict(params or {}), extras)
        return self._entries[name]

    def register(self, name: str | None = None, *, params: dict[str, Param] | None = None, **extras):
        """Decorator: `@MODELS.register()` on a function registers it under its own name."""
        def wrap(obj):
            self.add(name or obj.__name__, obj, params, **extras)
            return obj
        return wrap

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def resolve(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The entry's full parameters: defaults, overridden by `params`, each checked against
        its domain. A ValueError names the sub-path: '.<key>: must be ...'."""
        entry = self.get(name)
        out = entry.defaults
        for key, value in (params or {}).items():
            if key not in entry.params:
                raise ValueError(f".{key}: unknown parameter; known: {', '.join(entry.params) or 'none'}")
            try:
                out[key] = entry.params[key].validate(value)
            except ValueError as e:
                raise ValueError(f".{key}: {e}") from None
        return out
