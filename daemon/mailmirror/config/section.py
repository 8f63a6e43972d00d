"""The base of every config model, and the errors its validators raise at the right place.

:class:`Section` makes unknown keys errors, instances immutable and blank sections empty. A validator that
finds a problem in one of its own fields raises :func:`field_error`, which the loader reports at that field's
line; checks across sections collect :func:`custom_error` details and raise them together as one
:func:`validation_error`.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

SUBPATH = "mailmirror_subpath"
"""The context key of a PydanticCustomError that points below the model raising it (see :func:`field_error`)."""


def field_error(path: str | Sequence[str], message: str) -> PydanticCustomError:
    """An error raised by a model validator about one of its own fields, located at that field."""
    subpath = [path] if isinstance(path, str) else list(path)
    return PydanticCustomError("mailmirror", message, {SUBPATH: subpath})


class Section(BaseModel):
    """Every config model: unknown keys are errors, instances are immutable, defaults are validated too."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """YAML 1.1 reads yes/no/on/off/true/false as booleans, which pydantic would take as 1 and 0."""
        if not isinstance(data, dict):
            return data
        for name in _number_fields(cls):
            if isinstance(data.get(name), bool):
                got = "true" if data[name] else "false"
                message = f"must be a number, not {got} (YAML reads yes, no, on, off, true, false as true/false)"
                raise field_error(name, message)
        return data

    @model_validator(mode="before")
    @classmethod
    def _blank_means_empty(cls, data: Any) -> Any:
        """A section, mapping or list left blank (``defaults:`` with everything below commented out) is YAML
        null: read it as empty, i.e. all defaults."""
        if not isinstance(data, dict):
            return data
        blank = [name for name in _container_fields(cls) if name in data and data[name] is None]
        if not blank:
            return data
        return {**data, **{name: _empty_like(cls.model_fields[name].annotation) for name in blank}}


@functools.cache  # per model class: asked for every section of every pair (thousands with pair sets)
def _number_fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(name for name, field in model.model_fields.items() if unwrap(field.annotation) in (int, float))


@functools.cache
def _container_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """Fields holding a section, a mapping or a list (not Optional ones, for which null means something)."""
    return tuple(
        name for name, model_field in model.model_fields.items() if _empty_like(model_field.annotation) is not None
    )


def _empty_like(declared: Any) -> dict[str, Any] | list[Any] | None:
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return {}
    origin = get_origin(declared)
    if origin is dict:
        return {}
    if origin is list:
        return []
    return None


def custom_error(loc: tuple[Any, ...], message: str, value: Any) -> InitErrorDetails:
    """An error at ``loc`` of the whole config, found by a check across sections."""
    return InitErrorDetails(type=PydanticCustomError("mailmirror", message), loc=loc, input=value)


def copy_errors(error: ValidationError, prefix: tuple[Any, ...] = (), note: str = "") -> list[InitErrorDetails]:
    """The errors of ``error`` as raisable details (type, message and context kept as they are)."""
    copied: list[InitErrorDetails] = []
    for detail in error.errors(include_url=False):
        custom = PydanticCustomError(detail["type"], detail["msg"] + note, detail.get("ctx"))
        copied.append(InitErrorDetails(type=custom, loc=(*prefix, *detail["loc"]), input=detail["input"]))
    return copied


def validation_error(errors: list[InitErrorDetails]) -> ValidationError:
    """One error of the whole config holding ``errors`` (reported together by the loader)."""
    return ValidationError.from_exception_data("Config", errors)


def unwrap(declared: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` → ``X``."""
    while True:
        origin = get_origin(declared)
        if origin is Annotated:
            declared = get_args(declared)[0]
        elif origin in (Union, types.UnionType):
            options = [option for option in get_args(declared) if option is not type(None)]
            if len(options) != 1:
                return declared
            declared = options[0]
        else:
            return declared
