"""Typed strategy configs, the base of criteria and compensations: a frozen dataclass whose fields are its
options (`vbp.Affine(ridge=1e-2)`), registered by name. A name alone stands for the default config
("affine" == Affine()); files record a config as a versioned dict, {"name": "affine", "version": 1, "ridge": 0.01}.
"""

from abc import ABC
from dataclasses import dataclass, fields
from typing import ClassVar

from .errors import VbpError
from .registry import Registry


@dataclass(frozen=True)
class Strategy(ABC):
    """registry: where the configs of this kind are registered; needs: what the statistics (or the call) must
    provide; version: of the options' meaning, raised when it changes."""

    registry: ClassVar[Registry]
    needs: ClassVar[frozenset[str]] = frozenset()
    version: ClassVar[int] = 1

    @property
    def name(self) -> str:
        return self.registry.name_of(type(self))

    def to_dict(self) -> dict:
        """{"name", "version", option: value, ...}, JSON-able when the options are."""
        return {"name": self.name, "version": self.version, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def resolve(cls, value: "str | dict | Strategy") -> "Strategy":
        """The config `value` stands for: a config of this kind itself, a registered name (its default options)
        or a versioned dict (options left out take their defaults)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.registry.get(value)()
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            config = cls.registry.get(value["name"])
            if value.get("version", 1) != config.version:
                raise VbpError(
                    f"{cls.registry.what} '{value['name']}' version {value.get('version')} is not this vbp's "
                    f"version {config.version}; use the vbp that wrote it"
                )
            options = {k: v for k, v in value.items() if k not in ("name", "version")}
            try:
                return config(**options)
            except TypeError as exc:
                raise VbpError(f"{cls.registry.what} '{value['name']}' does not take these options: {exc}") from exc
        raise VbpError(
            f"a {cls.registry.what} is a name ({', '.join(cls.registry)}), a {cls.__name__} config or its dict; "
            f"got {value!r}"
        )
