"""The registry of unlearning methods: defining a subclass registers it.

:func:`build` makes the runs of one configured method from its config section,
checking each setting against the constructor's typed keyword arguments, so a
misspelt or mistyped setting is refused by name before any round.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strategies.unlearning import UnlearningStrategy

METHODS: dict[str, type[UnlearningStrategy]] = {}


def register(cls: type[UnlearningStrategy]) -> None:
    """Add a method under its ``name`` (called by ``UnlearningStrategy.__init_subclass__``).

    Raises
    ------
    ValueError
        Another class already holds the name.
    """
    other = METHODS.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name '{cls.name}' is taken by {other.__qualname__}")
    METHODS[cls.name] = cls


def check_methods(names: list[str]) -> None:
    """Raise a one-line ValueError for a name that is not a registered method."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown unlearning method(s) {unknown}; known: {', '.join(METHODS)}")


def options(cls: type[UnlearningStrategy], section: Mapping[str, Any] | None
            ) -> dict[str, Any]:
    """The method's settings from its config section, checked against its constructor,
    with the constructor's defaults for the settings the section leaves out.

    Parameters
    ----------
    cls : type
        A registered method.
    section : mapping or None
        ``unlearn.<cls.section>`` as a plain dict (None for a method without one).

    Raises
    ------
    ValueError
        A setting the constructor does not take, a missing one, or one of the wrong
        type; the message names ``unlearn.<section>.<key>``.
    """
    hints = typing.get_type_hints(cls.__init__)
    params = {name: p for name, p in inspect.signature(cls.__init__).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and name in _own(cls)}
    given = dict(section or {})
    where = f"unlearn.{cls.section}"
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(f"{where} has unknown setting(s) {unknown}; "
                         f"{cls.name} takes {', '.join(params) or 'none'}")
    for name, param in params.items():
        if name not in given:
            if param.default is inspect.Parameter.empty:
                raise ValueError(f"{where}.{name} is missing")
            # Filled in, so that a receipt shows every setting the method ran with.
            given[name] = param.default
            continue
        given[name] = _typed(f"{where}.{name}", given[name], hints.get(name))
    return given


def _own(cls: type) -> set[str]:
    """Keyword-only parameters that a method adds to the base constructor's."""
    from strategies.unlearning import UnlearningStrategy

    base = set(inspect.signature(UnlearningStrategy.__init__).parameters)
    return set(inspect.signature(cls.__init__).parameters) - base


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a simple annotation (int, float, bool, str, lists, None)."""
    if hint is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for arg in inner:
            try:
                return _typed(key, value, arg)
            except ValueError as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (list, tuple) or hint in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{key} must be a list, got {value!r}")
        item = args[0] if args else None
        return [_typed(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    return value


def plan(names: list[str], sections: Mapping[str, Any]
         ) -> list[tuple[str, type[UnlearningStrategy], dict[str, Any]]]:
    """The runs of the configured methods: ``(label, class, constructor options)``.

    Each method reads its own section, makes its runs (:meth:`variants`), has its
    options checked against its constructor's types, and is built once with empty
    targets, so that the ranges its constructor checks are checked now too.

    Parameters
    ----------
    names : list of str
        ``unlearn.methods``.
    sections : mapping
        ``unlearn`` as a plain dict (``sections[cls.section]`` is a method's settings).

    Raises
    ------
    ValueError
        An unknown method or a refused setting; one line naming it.
    """
    from strategies.unlearning import Recovery, Targets

    check_methods(names)
    runs = []
    probe = (Targets([], [], ""), Recovery(1, 0, 0.01, 1))
    for name in names:
        cls = METHODS[name]
        section = sections.get(cls.section) if cls.section else None
        for label, raw in cls.variants(section or {}):
            opts = options(cls, raw)
            cls(*probe, **opts)  # the constructor's own range checks
            runs.append((label, cls, opts))
    return runs
