"""Typed payloads: a handler's ``payload_type``, a pydantic v2 model or a dataclass.

``submit`` passes the payload through :func:`dump` (an instance of the type, or a dict of its
fields, validated and turned into JSON-ready data; :class:`PayloadError` naming the field when
it does not fit), and the handler gets :func:`load` of the stored JSON: an instance of the type.

pydantic is optional: a pydantic model class can only exist once pydantic is imported, so it is
recognised through ``sys.modules`` and never imported here. Dataclasses are checked by their
type hints: ``int``, ``float``, ``str``, ``bool``, ``None``, ``Any``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]``, ``X | None`` and other unions, ``Literal[...]``, enums,
nested dataclasses and pydantic models; a field of any other class must be an instance of it.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from tideflow.errors import InvalidOptionError, PayloadError

__all__ = ["check_type", "dump", "load", "type_name"]

_MISSING = dataclasses.MISSING


def _pydantic_base() -> Any:
    module = sys.modules.get("pydantic")
    base = getattr(module, "BaseModel", None) if module is not None else None
    return base if base is not None and hasattr(base, "model_validate") else None


def _is_pydantic(tp: Any) -> bool:
    base = _pydantic_base()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_name(tp: Any) -> str:
    """``module.Qualname`` of a payload type."""
    return f"{getattr(tp, '__module__', '?')}.{getattr(tp, '__qualname__', repr(tp))}"


def check_type(name: str, value: Any) -> type:
    """A registration's ``payload_type``: a pydantic v2 model class or a dataclass (the class,
    not an instance), else :class:`InvalidOptionError`."""
    if _is_dataclass_type(value):
        hints_of(value)  # hints that cannot be resolved fail at registration, not at submit
        return typing.cast(type, value)
    if _is_pydantic(value):
        return typing.cast(type, value)
    raise InvalidOptionError(
        f"option {name!r} must be a pydantic v2 BaseModel subclass or a dataclass (the class"
        f" itself), got {value!r}"
    )


def hints_of(tp: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (InvalidOptionError if they cannot be read)."""
    try:
        return typing.get_type_hints(tp)
    except Exception as exc:
        raise InvalidOptionError(
            f"the type hints of payload type {type_name(tp)} cannot be resolved ({exc});"
            " define the types it names at module level"
        ) from None


class _Mismatch(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def _where(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_fields(exc: Exception, path: str = "") -> list[tuple[str, str]]:
    """(field path, message) of the first few errors of a pydantic ``ValidationError``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return [(path, str(exc))]
    out = []
    for err in errors()[:5]:
        where = path
        for part in err.get("loc", ()):
            where = _where(where, part)
        out.append((where, str(err.get("msg", "invalid"))))
    return out


def _pydantic_errors(exc: Exception) -> str:
    return "; ".join(
        f"field {where!r}: {msg}" if where else msg for where, msg in _pydantic_fields(exc)
    )


def _build_dataclass(tp: type, data: Any, path: str) -> Any:
    if isinstance(data, tp):
        data = _jsonable(data)
    if not isinstance(data, Mapping):
        raise _Mismatch(
            path, f"expected an object with the fields of {tp.__name__}, got {_shown(data)}"
        )
    hints = hints_of(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise _Mismatch(
            _where(path, unknown[0]),
            f"unknown field (allowed: {', '.join(fields) or 'none'})",
        )
    values: dict[str, Any] = {}
    for fname, field in fields.items():
        here = _where(path, fname)
        if fname not in data:
            if field.default is _MISSING and field.default_factory is _MISSING:
                raise _Mismatch(here, "field required")
            continue
        values[fname] = _convert(hints.get(fname, Any), data[fname], here)
    try:
        return tp(**values)
    except Exception as exc:  # a __post_init__ that refuses the values
        raise _Mismatch(path, f"{tp.__name__}(...) raised {type(exc).__name__}: {exc}") from None


def _convert(hint: Any, value: Any, path: str) -> Any:
    if hint is Any or hint is object:
        return value
    if hint is None or hint is type(None):
        if value is not None:
            raise _Mismatch(path, f"expected None, got {_shown(value)}")
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        problems = []
        for arm in args:
            try:
                return _convert(arm, value, path)
            except _Mismatch as exc:
                problems.append(exc.problem)
        raise _Mismatch(path, " or ".join(problems))
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch(path, f"expected one of {', '.join(map(repr, args))}, got {_shown(value)}")
    if origin is typing.Annotated:
        return _convert(args[0], value, path)
    if origin in (list, Sequence, tuple, set, frozenset):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
            raise _Mismatch(path, f"expected a list, got {_shown(value)}")
        items = list(value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise _Mismatch(path, f"expected {len(args)} items, got {len(items)}")
            return tuple(
                _convert(a, v, _where(path, i))
                for i, (a, v) in enumerate(zip(args, items, strict=True))
            )
        arm = args[0] if args else Any
        out = [_convert(arm, v, _where(path, i)) for i, v in enumerate(items)]
        if origin is tuple:
            return tuple(out)
        if origin in (set, frozenset):
            return origin(out)
        return out
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch(path, f"expected an object, got {_shown(value)}")
        arm = args[1] if len(args) == 2 else Any
        out_map: dict[Any, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Mismatch(path, f"keys must be strings, got {_shown(key)}")
            out_map[key] = _convert(arm, item, _where(path, key))
        return out_map
    if origin is not None:  # another generic: check the plain class only
        hint = origin
    if not isinstance(hint, type):
        return value
    if _is_dataclass_type(hint):
        return _build_dataclass(hint, value, path)
    if _is_pydantic(hint):
        try:
            return hint.model_validate(value)  # type: ignore[attr-defined]
        except Exception as exc:
            where, msg = _pydantic_fields(exc, path)[0]
            raise _Mismatch(where, msg) from None
    if issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            raise _Mismatch(path, f"expected one of {allowed}, got {_shown(value)}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise _Mismatch(path, f"expected true or false, got {_shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch(path, f"expected an integer, got {_shown(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch(path, f"expected a number, got {_shown(value)}")
        return float(value)
    if not isinstance(value, hint):
        raise _Mismatch(path, f"expected {hint.__name__}, got {_shown(value)}")
    return value


def _jsonable(value: Any) -> Any:
    """A typed value as JSON-ready data (dataclasses, models, enums, tuples unpacked)."""
    if _is_dataclass_type(type(value)):
        return {
            f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
        }
    if _is_pydantic(type(value)):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return value


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _refuse(tp: type, what: str, problem: str) -> PayloadError:
    return PayloadError(
        f"{what} does not fit {tp.__name__} ({type_name(tp)}): {problem}; pass"
        f" {_article(tp.__name__)} {tp.__name__}(...) or a dict of its fields"
    )


def _validate(tp: type, value: Any, what: str) -> Any:
    if _is_pydantic(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _refuse(tp, what, f"got {_shown(value)}")
        try:
            return tp.model_validate(value)  # type: ignore[attr-defined]
        except Exception as exc:
            raise _refuse(tp, what, _pydantic_errors(exc)) from None
    try:
        return _build_dataclass(tp, value, "")
    except _Mismatch as exc:
        where = f"field {exc.path!r}: " if exc.path else ""
        raise _refuse(tp, what, where + exc.problem) from None


def dump(tp: type, value: Any, what: str) -> Any:
    """Validate ``value`` (an instance of ``tp`` or a dict of its fields) and return it as
    JSON-ready data, or raise :class:`PayloadError` naming the field that does not fit."""
    typed = _validate(tp, value, what)
    try:
        return _jsonable(typed)
    except Exception as exc:  # e.g. a pydantic serializer that raises
        raise _refuse(tp, what, f"it cannot be serialised: {exc}") from None


def load(tp: type, data: Any, what: str) -> Any:
    """The stored JSON ``data`` as an instance of ``tp`` (:class:`PayloadError` if it does not
    fit, e.g. the type changed since the task was submitted)."""
    return _validate(tp, data, what)
