"""The kind registry. A kind is the unit of extension: see annotation/kinds/base.py."""

from .base import Kind, KindError, ExportFormat  # noqa: F401

_REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.name in _REGISTRY:
        raise KindError(f"kind {kind.name!r} is registered twice")
    _REGISTRY[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KindError(f"unknown kind {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def all_kinds() -> list[Kind]:
    return list(_REGISTRY.values())


def kind_choices() -> list[tuple[str, str]]:
    return [(k.name, k.label) for k in _REGISTRY.values()]


from . import lfm  # noqa: E402,F401  (registers itself)
