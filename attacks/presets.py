"""Attack presets: the six settings of seed paper 000, Table 1, and custom ones from a file.

=========  =====  ====================  ======  ======  ===  =====
preset     steps  step size / lr        eps     dist.   c    kappa
=========  =====  ====================  ======  ======  ===  =====
PGD-N      20     2/255                 8/255   Linf    -    -
APGD-N     20     - (adaptive)          8/255   Linf    -    -
CW-N       50     lr 0.01 (Adam)        -       L2      20   0
PGD-S      40     2/255 (see below)     0.2     Linf    -    -
APGD-S     40     - (adaptive)          0.2     Linf    -    -
CW-S       75     lr 0.05 (Adam)        -       L2      100  0
=========  =====  ====================  ======  ======  ===  =====

The table prints PGD-S's step as "2/225"; it is treated as a typo for 2/255, the step of
PGD-N and of every PGD reference the paper follows (Cui et al. 2024). All values are in
[0, 1] pixel space. CLI names are ``pgd-n pgd-s apgd-n apgd-s cw-n cw-s`` (and ``all``);
output folders mirror the public MEL-Robustness release, ``ADV-MEL/{PGD,APGD,CW}-{normal,strong}``.

Custom presets come from a JSON or TOML file (``load_presets``)::

    [presets.pgd-tiny]          # JSON: {"presets": {"pgd-tiny": {...}}}
    method = "pgd"
    steps = 5
    alpha = 0.00392156862745098
    eps = 0.0156862745
    folder = "PGD-tiny"         # optional; default "<METHOD>-<name>"
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Method = Literal["pgd", "apgd", "cw"]
METHODS: tuple[Method, ...] = ("pgd", "apgd", "cw")
PAPER_ORDER = ("pgd-n", "apgd-n", "cw-n", "pgd-s", "apgd-s", "cw-s")


@dataclass(frozen=True)
class Preset:
    """One attack setting. ``eps``/``alpha`` for PGD/APGD (Linf); ``lr``/``c``/``kappa`` for CW (L2)."""

    name: str
    method: Method
    steps: int
    norm: Literal["Linf", "L2"]
    eps: float | None = None
    alpha: float | None = None
    lr: float | None = None
    c: float | None = None
    kappa: float | None = None
    folder: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"preset {self.name!r}: method must be one of {METHODS}, got {self.method!r}")
        if self.steps < 1:
            raise ValueError(f"preset {self.name!r}: steps must be >= 1")
        needed = {"pgd": ("eps", "alpha"), "apgd": ("eps",), "cw": ("lr", "c", "kappa")}[self.method]
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise ValueError(f"preset {self.name!r} ({self.method}) needs {', '.join(missing)}")
        if self.method != "cw" and self.norm != "Linf":
            raise ValueError(f"preset {self.name!r}: only Linf PGD/APGD are supported")
        if self.method == "cw" and self.norm != "L2":
            raise ValueError(f"preset {self.name!r}: CW is an L2 attack")
        if not self.folder:
            object.__setattr__(self, "folder", f"{self.method.upper()}-{self.name}")

    def params(self) -> dict[str, Any]:
        """Every parameter, as written to ``attack.json`` and each manifest line."""
        return asdict(self)

    def with_steps(self, steps: int) -> Preset:
        """The same preset with another step count (benchmarks; never for released sets)."""
        return Preset(**{**asdict(self), "steps": steps})


PRESETS: dict[str, Preset] = {
    "pgd-n": Preset("pgd-n", "pgd", 20, "Linf", eps=8 / 255, alpha=2 / 255, folder="PGD-normal"),
    "apgd-n": Preset("apgd-n", "apgd", 20, "Linf", eps=8 / 255, folder="APGD-normal"),
    "cw-n": Preset("cw-n", "cw", 50, "L2", lr=0.01, c=20.0, kappa=0.0, folder="CW-normal"),
    # Table 1 prints 2/225: read as a typo for 2/255 (see module docstring).
    "pgd-s": Preset("pgd-s", "pgd", 40, "Linf", eps=0.2, alpha=2 / 255, folder="PGD-strong"),
    "apgd-s": Preset("apgd-s", "apgd", 40, "Linf", eps=0.2, folder="APGD-strong"),
    "cw-s": Preset("cw-s", "cw", 75, "L2", lr=0.05, c=100.0, kappa=0.0, folder="CW-strong"),
}
"""Seed paper 000, Table 1."""


def load_presets(path: Path | str) -> dict[str, Preset]:
    """Custom presets from a ``.json`` or ``.toml`` file holding a ``presets`` table (see module doc)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    table = data.get("presets", data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: expected a 'presets' table of name -> parameters")
    known = {f.name for f in fields(Preset)}
    presets = {}
    for name, spec in table.items():
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"{path}: preset {name!r} has unknown keys {sorted(unknown)}")
        spec = {"norm": "L2" if spec.get("method") == "cw" else "Linf", **spec, "name": name}
        presets[name] = Preset(**spec)
    return presets


def resolve(selection: str, config: Path | str | None = None) -> list[Preset]:
    """``all``, one name or a comma list (Table 1 names, plus the config file's) -> presets."""
    available = dict(PRESETS)
    if config is not None:
        available.update(load_presets(config))
    names = [s.strip().lower() for s in selection.split(",") if s.strip()]
    chosen: list[Preset] = []
    for name in names:
        if name == "all":
            chosen += [available[n] for n in PAPER_ORDER]
            chosen += [p for n, p in available.items() if n not in PRESETS]
        elif name in available:
            chosen.append(available[name])
        else:
            raise ValueError(f"unknown attack preset {name!r}; choose from all, {', '.join(available)}")
    return list(dict.fromkeys(chosen))
