"""Recipe name -> class, imported lazily so serving a popularity model never imports torch."""

from __future__ import annotations

import importlib
import math
from typing import Any

from foretell.recipes.base import Param, Recommender

RECIPES: dict[str, str] = {
    "popularity-count": "foretell.recipes.popularity:Popularity",
    "sims": "foretell.recipes.sims:Sims",
    "ease": "foretell.recipes.ease:Ease",
    "als": "foretell.recipes.als:Als",
    "sequence": "foretell.recipes.sequence:Sequence",
}


def recipe_class(name: str) -> type[Recommender]:
    """The class of recipe `name`; KeyError when there is none."""
    module, _, attr = RECIPES[name].partition(":")
    cls: type[Recommender] = getattr(importlib.import_module(module), attr)
    return cls


class ParamError(ValueError):
    """A hyper-parameter that does not exist or does not parse; `.name` says which."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _parse(name: str, spec: Param, raw: str) -> Any:
    try:
        if spec.kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value: Any = raw.lower() in ("true", "1")
        else:
            value = spec.kind(raw)
    except ValueError:
        raise ParamError(name, f"{raw[:40]!r} is not a valid {spec.kind.__name__}") from None
    if isinstance(value, float) and not math.isfinite(value):
        # NaN passes every bound check below, and trained a model of zeros that "SUCCEEDED".
        raise ParamError(name, f"{raw[:40]!r} is not a finite number")
    if spec.choices and value not in spec.choices:
        raise ParamError(name, f"must be one of {', '.join(spec.choices)}")
    if spec.low is not None and value < spec.low:
        raise ParamError(name, f"must be at least {spec.low}")
    if spec.high is not None and value > spec.high:
        raise ParamError(name, f"must be at most {spec.high}")
    return value


def parse_params(recipe: str, raw: dict[str, str]) -> dict[str, Any]:
    """Typed hyper-parameters with defaults filled in; ParamError names the first bad one."""
    specs = recipe_class(recipe).params
    for name in raw:
        if name not in specs:
            raise ParamError(name, f"unknown hyper-parameter of {recipe}; known: {', '.join(sorted(specs))}")
    return {name: _parse(name, spec, raw[name]) if name in raw else spec.default for name, spec in specs.items()}


def describe_recipes() -> str:
    """Markdown reference of every recipe and its hyper-parameters (docs/recipes.md is this text)."""
    lines = [
        "# Recommendation recipes",
        "",
        "Generated from `foretell.recipes.registry.describe_recipes()` (also `foretell recipes`); a test keeps",
        "this file current. Hyper-parameters are strings in `Solution.hyper_parameters`; unset ones take the",
        "default. With HPO and no ranges of its own, a solution tunes the parameters listed under each recipe.",
    ]
    from foretell.recipes.hpo import default_space  # hpo imports this module

    for name in RECIPES:
        cls = recipe_class(name)
        module = importlib.import_module(cls.__module__)
        summary = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ").removeprefix(f"{name}: ")
        summary = summary[:1].upper() + summary[1:]
        tuned = ", ".join(f"`{r.name}`" for r in default_space(name)) or "nothing (no default space)"
        lines += ["", f"## {name}", "", summary, "", f"HPO searches: {tuned}.", ""]
        lines += ["| parameter | type | default | range | meaning |", "|---|---|---|---|---|"]
        for param, spec in cls.params.items():
            if spec.choices:
                bounds = " / ".join(spec.choices)
            elif spec.low is not None or spec.high is not None:
                bounds = f"{_number(spec.low)} .. {_number(spec.high)}"
            else:
                bounds = ""
            cell = spec.doc.replace("|", "\\|")
            lines.append(f"| `{param}` | {spec.kind.__name__} | `{spec.default}` | {bounds} | {cell} |")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"
