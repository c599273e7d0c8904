"""Budget files: what to prune, to what, and how to search. TOML, strict schema, version 1.

Every key is checked: an unknown key, a wrong type or an out-of-range value is an error that
names the file, the key and what is allowed, before any data is loaded. Relative paths in a
budget file are relative to the directory the command runs in (the repository root in all our
examples). See ``budgets/README.md`` for every field.

Example:
    >>> budget = load_budget("budgets/resnet56_cifar10_keep50.toml", overrides={"search.epochs": 1})
    >>> budget.flops_target(250_971_392)
    125485696.0
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "Budget",
    "BaselineSpec",
    "BudgetSpec",
    "DataSpec",
    "FinetuneSpec",
    "ModelSpec",
    "MonitorSpec",
    "SearchSpec",
    "check_budget",
    "load_budget",
    "parse_budget",
    "parse_override",
]

VERSION = 1
SECTIONS = ("model", "data", "budget", "search", "baseline", "finetune", "monitor")
MODES = ("dais", "dsa", "dais+dsa")
KD_MODES = ("sp", "logit", "sp+logit", "none")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    name: str = ""
    checkpoint: str = ""
    num_classes: int = 0  # 0: from the data set


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "shapes"
    data_dir: str = "data"
    download: bool = False  # let torchvision fetch cifar10 / cifar100 into data_dir when missing
    held_out: int = 5000
    split_seed: int = 0
    normalize: str = "imagenet"
    batch_size: int = 128
    workers: int = 2
    augment: bool = True  # random crop + flip of the search's train and held-out batches


@dataclass(frozen=True)
class BudgetSpec:
    flops: str | float = "50%"
    params: str | float = ""
    input_size: tuple[int, ...] = ()
    ignore: tuple[str, ...] = ()
    min_keep: int = 1
    prune_streams: bool = True  # false: residual streams (groups several layers produce) are not pruned
    round_to: int = 1  # every kept width a multiple of this (or the group's full width): 8 for tensor cores / SIMD
    # "50%" (of the dense model's measured latency), a fraction, or "12.5ms". Alone (flops = ""): the target.
    # With flops: a ceiling the FLOPs-budgeted plan must also keep under (what binds picks the widths).
    latency: str | float = ""


@dataclass(frozen=True)
class SearchSpec:
    mode: str = "dais+dsa"
    epochs: int = 2
    train_weights: bool = True  # false: the weights stay the teacher's; only gates learn (no weight epochs)
    weight_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gate_lr: float = 0.05
    gate_weight_decay: float = 0.0
    temperature_start: float = 1.0
    temperature_end: float = 0.02
    temperature_schedule: str = "exponential"
    warmup: float = 0.0  # fraction of the search held at temperature_start before the annealing starts
    rho: float = 1.0
    gate_every: int = 0  # weight steps per gate step; 0: len(train split) / len(held-out split)
    max_steps: int = 0  # weight steps per epoch; 0: the whole train split
    checkpoint_every: int = 100  # steps between mid-epoch saves of the search state; 0: at the end of epochs only
    recalibrate_batches: int = 50
    seed: int = 0
    precision: str = "fp32"  # "bf16": autocast of the forward passes (weights and gates stay float32)
    channels_last: bool = False  # channels-last memory format for the convolutions
    granularity: tuple[str, ...] = ("channel",)  # add "block" (residual blocks) and/or "layer" (chain layers)
    block_thin: float = 0.125  # with blocks: a kept block whose narrowest inner group keeps <= this fraction goes


@dataclass(frozen=True)
class BaselineSpec:
    candidates: int = 50  # EagleEye: random keep-ratio vectors to evaluate
    score_batches: int = 20  # held-out batches that data criteria (taylor, apoz, entropy) score on
    eval_batches: int = 0  # held-out batches that score each EagleEye candidate; 0: the whole split


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: int = 5
    lr: float = 0.01
    overparam: int = 4  # expansion ratio r; 0: plain fine-tune
    kd: str = "sp"  # sp, logit, sp+logit, none
    kd_layers: str = "stages"  # stages, blocks, or comma-separated module paths
    sp_weight: float = 3000.0
    logit_weight: float = 1.0
    temperature: float = 4.0
    max_steps: int = 0  # per epoch; 0: all training images
    precision: str = "fp32"  # "bf16": autocast of the fine-tune's forward passes
    channels_last: bool = False
    checkpoint_every: int = 200  # steps between saves of the fine-tune state (bundle/state.pt)
    sparsity: float = 0.0  # weight grain: fraction of conv/linear weights zeroed by magnitude after the fold
    sparsity_scope: str = "global"  # "global" (one threshold) or "layer" (the fraction in every layer)
    sparse_epochs: int = 1  # fine-tune epochs with the zeros held


@dataclass(frozen=True)
class MonitorSpec:
    every: int = 0  # weight steps between TensorBoard points of the search's curves; 0: about 200 points per search
    snapshots: int = 10  # indicator heatmaps and histograms per search (and one at the end)


@dataclass(frozen=True)
class Budget:
    """A parsed budget file (see the module docstring)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    monitor: MonitorSpec = field(default_factory=MonitorSpec)
    source: str = ""

    @property
    def latency_role(self) -> str:
        """What ``budget.latency`` is: ``""`` (none: a FLOPs budget), ``"target"`` (alone: the plan's
        measured latency lands on it) or ``"ceiling"`` (beside ``budget.flops``: the FLOPs target
        holds where the latency allows, and the latency never goes over)."""
        if self.budget.latency in ("", None):
            return ""
        return "target" if self.budget.flops in ("", None) else "ceiling"

    def flops_target(self, dense_flops: int) -> float | None:
        """The FLOPs the pruned model may have, from ``budget.flops`` ("50%" or an absolute count);
        ``None`` when the budget is in latency alone."""
        if self.budget.flops in ("", None):
            return None
        return _target(self.budget.flops, dense_flops, "budget.flops")

    def latency_target(self, dense_seconds: float) -> float | None:
        """Seconds per forward pass the pruned model may take, from ``budget.latency``; ``None`` when
        there is no latency budget."""
        value = self.budget.latency
        if value in ("", None):
            return None
        if isinstance(value, str) and value.endswith("ms"):
            return float(value[:-2]) / 1e3
        if isinstance(value, str):
            return float(value[:-1]) / 100 * dense_seconds
        return float(value) * dense_seconds

    def params_target(self, dense_params: int) -> float | None:
        """The parameter budget, or ``None`` when there is none."""
        if self.budget.params in ("", None):
            return None
        return _target(self.budget.params, dense_params, "budget.params")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}
MIN_ABSOLUTE = 1000  # smaller numbers above 1 are typos of fractions, not FLOPs counts


def _target(value: str | float, dense: int, key: str) -> float:
    if isinstance(value, str):
        if value.endswith("%"):
            return float(value[:-1]) / 100 * dense
        return float(value[:-1]) * _UNITS[value[-1].upper()] if value[-1].upper() in _UNITS else float(value)
    return float(value) * dense if value <= 1 else float(value)


def _check_fraction(value: Any, key: str, where: str) -> str | float:
    """A budget: ``"50%"``, a fraction in (0, 1], or an absolute count (``1.25e8``, ``"125M"``)."""
    forms = 'write "50%", a fraction in (0, 1] like 0.5, or an absolute count like 1.25e8 or "125M"'
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        number, unit = (text[:-1], text[-1]) if text and (text[-1] == "%" or text[-1].upper() in _UNITS) else (text, "")
        try:
            amount = float(number)
        except ValueError:
            raise UserError(f"{where}: {key} = {value!r} is not a budget; {forms}") from None
        if unit == "%" and not 0 < amount <= 100:
            raise UserError(f'{where}: {key} = {value!r}; write a percentage in (0%, 100%] like "50%"')
        if unit != "%" and amount * _UNITS.get(unit.upper(), 1) < MIN_ABSOLUTE:
            raise UserError(f"{where}: {key} = {value!r} is too small for an absolute count; {forms}")
        return text
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{where}: {key} = {value!r}; {forms}")
    if value > 1 and (value < MIN_ABSOLUTE or not float(value).is_integer()):
        raise UserError(
            f"{where}: {key} = {value!r} is neither a fraction in (0, 1] nor an absolute count (a whole number "
            f">= {MIN_ABSOLUTE}); {forms}"
        )
    return float(value)


def _section(cls, raw: Any, name: str, where: str):
    if not isinstance(raw, dict):
        raise UserError(f"{where}: [{name}] must be a table")
    allowed = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise UserError(
            f"{where}: unknown key {name}.{unknown[0]}; allowed keys in [{name}]: {', '.join(sorted(allowed))}"
        )
    values = {}
    for key, value in raw.items():
        default = allowed[key].default
        full = f"{name}.{key}"
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, tuple):
            ok = isinstance(value, list)
            value = tuple(value) if ok else value
        else:
            ok = True
        if not ok:
            raise UserError(f"{where}: {full} = {value!r} should be a {type(default).__name__}")
        values[key] = value
    return cls(**values)


def parse_budget(raw: dict[str, Any], where: str = "budget") -> Budget:
    """Validates a budget given as a dict (the parsed TOML). See :func:`load_budget`."""
    raw = dict(raw)
    version = raw.pop("version", None)
    if version != VERSION:
        raise UserError(f"{where}: version = {version!r}; this dais_search reads budget files with version = {VERSION}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        allowed = ", ".join(f"[{s}]" for s in SECTIONS)
        raise UserError(f"{where}: unknown table or key {unknown[0]!r}; allowed: version, {allowed}")
    model = _section(ModelSpec, raw.get("model", {}), "model", where)
    data = _section(DataSpec, raw.get("data", {}), "data", where)
    budget = _section(BudgetSpec, raw.get("budget", {}), "budget", where)
    if budget.latency not in ("", None) and "flops" not in raw.get("budget", {}):
        budget = dataclasses.replace(budget, flops="")  # latency alone is the target; with flops, a ceiling
    search = _section(SearchSpec, raw.get("search", {}), "search", where)
    finetune = _section(FinetuneSpec, raw.get("finetune", {}), "finetune", where)
    baseline = _section(BaselineSpec, raw.get("baseline", {}), "baseline", where)
    monitor = _section(MonitorSpec, raw.get("monitor", {}), "monitor", where)
    if not model.name:
        raise UserError(f'{where}: model.name is required (a registry name such as "resnet56" or "tv:resnet50")')
    return check_budget(Budget(model, data, budget, search, baseline, finetune, monitor, where))


def check_budget(budget: Budget) -> Budget:
    """Checks the values of a budget (one built in Python too); returns it with ``budget.flops`` and
    ``budget.params`` normalised (percentages stripped of spaces, numbers as floats).

    The temperature schedule is checked against its registry by the search
    (:func:`dais_search.search.schedules.get_schedule`), where users register their own.

    Raises:
        UserError: naming the key, the value and what is allowed.
    """
    where = budget.source or "budget"
    data, spec, search, finetune = budget.data, budget.budget, budget.search, budget.finetune
    if finetune.kd not in KD_MODES:
        raise UserError(f"{where}: finetune.kd = {finetune.kd!r}; choose sp, logit, sp+logit or none")
    if finetune.epochs < 1 or finetune.lr <= 0 or finetune.overparam < 0:
        raise UserError(f"{where}: need finetune.epochs >= 1, finetune.lr > 0 and finetune.overparam >= 0")
    scopes = ("global", "layer")
    if not 0 <= finetune.sparsity < 1 or finetune.sparsity_scope not in scopes or finetune.sparse_epochs < 0:
        raise UserError(f"{where}: finetune.sparsity = {finetune.sparsity}, sparsity_scope = "
                        f"{finetune.sparsity_scope!r}, sparse_epochs = {finetune.sparse_epochs}; give a fraction of "
                        'the weights in [0, 1) (0: off), "global" or "layer", and epochs >= 0')  # fmt: skip
    spec = dataclasses.replace(
        spec,
        flops=_check_fraction(spec.flops, "budget.flops", where) if spec.flops not in ("", None) else "",
        params=_check_fraction(spec.params, "budget.params", where) if spec.params not in ("", None) else "",
    )
    size = spec.input_size
    if size and (len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size)):
        raise UserError(f"{where}: budget.input_size = {list(spec.input_size)}; give [C, H, W], e.g. [3, 32, 32]")
    for section, spec_ in (("search", search), ("finetune", finetune)):
        if spec_.precision not in PRECISIONS:
            raise UserError(f'{where}: {section}.precision = {spec_.precision!r}; choose "fp32" or "bf16"')
    if not 0 <= search.block_thin < 1:
        raise UserError(f"{where}: search.block_thin = {search.block_thin}; give a fraction in [0, 1) (0: off)")
    if "channel" not in search.granularity or not set(search.granularity) <= {"block", "layer", "channel"}:
        raise UserError(f"{where}: search.granularity = {list(search.granularity)}; give [\"channel\"] with any of "
                        '"block" (residual blocks removed whole) and "layer" (layers of plain chains removed, '
                        'as in VGG), e.g. ["block", "channel"]')
    if search.mode not in MODES:
        raise UserError(f"{where}: search.mode = {search.mode!r}; choose one of {', '.join(MODES)}")
    if not 0 < search.temperature_end <= search.temperature_start:
        raise UserError(f"{where}: need 0 < search.temperature_end <= search.temperature_start")
    if search.epochs < 1:
        raise UserError(f"{where}: search.epochs must be at least 1")
    if not 0 <= search.warmup < 1:
        raise UserError(f"{where}: search.warmup = {search.warmup}; give a fraction of the search in [0, 1)")
    if search.gate_every < 0 or search.max_steps < 0 or search.checkpoint_every < 0:
        raise UserError(f"{where}: search.gate_every, search.max_steps and search.checkpoint_every must be >= 0 "
                        "(0: automatic / whole epochs)")  # fmt: skip
    for key in ("weight_lr", "gate_lr", "rho"):
        if getattr(search, key) <= 0:
            raise UserError(f"{where}: search.{key} must be positive")
    if data.batch_size < 1 or data.held_out < 1:
        raise UserError(f"{where}: data.batch_size and data.held_out must be at least 1")
    if spec.min_keep < 1:
        raise UserError(f"{where}: budget.min_keep must be at least 1")
    if spec.latency not in ("", None):
        spec = dataclasses.replace(spec, latency=_check_latency(spec.latency, where))
    elif spec.flops == "":
        raise UserError(f"{where}: the budget has neither budget.flops nor budget.latency; give one, e.g. "
                        'flops = "50%"')  # fmt: skip
    if spec.round_to < 1:
        raise UserError(f"{where}: budget.round_to = {spec.round_to}; give a positive integer (1: any width, "
                        "8: multiples of 8)")  # fmt: skip
    base = budget.baseline
    if base.candidates < 1 or base.score_batches < 1 or base.eval_batches < 0:
        raise UserError(f"{where}: need baseline.candidates >= 1, baseline.score_batches >= 1 and "
                        "baseline.eval_batches >= 0 (0: the whole held-out split)")  # fmt: skip
    if budget.monitor.every < 0 or budget.monitor.snapshots < 1:
        raise UserError(f"{where}: need monitor.every >= 0 (0: about 200 points per curve) and monitor.snapshots "
                        ">= 1 (indicator heatmaps per search)")  # fmt: skip
    return dataclasses.replace(budget, budget=spec)


def _check_latency(value: str | float, where: str) -> str | float:
    """``"50%"``, a fraction in (0, 1), or milliseconds ``"12.5ms"``; anything else is an error."""
    hint = 'give "50%" (of the dense model\'s measured latency), a fraction such as 0.5, or milliseconds "12.5ms"'
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: budget.latency = {value!r}; {hint}")
    if isinstance(value, str):
        text = value.replace(" ", "").lower()
        try:
            number = float(text[:-2]) if text.endswith("ms") else float(text[:-1]) / 100 if text.endswith("%") else None
        except ValueError:
            number = None
        if number is None or number <= 0 or (text.endswith("%") and number >= 1):
            raise UserError(f"{where}: budget.latency = {value!r}; {hint}, below 100%")
        return text
    if not 0 < value < 1:
        raise UserError(f"{where}: budget.latency = {value!r}; {hint}, below 100%")
    return float(value)


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key or section not in SECTIONS:
            raise UserError(f"override {dotted!r}: write SECTION.KEY=VALUE with SECTION one of {', '.join(SECTIONS)}")
        raw.setdefault(section, {})[key] = value
    return raw


def load_budget(path: str | Path, overrides: dict[str, Any] | None = None) -> Budget:
    """Reads and validates a TOML budget file, applying ``{"section.key": value}`` overrides.

    Raises:
        UserError: missing file, invalid TOML, unknown key, wrong type or value.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"budget file {str(path)!r} does not exist; see budgets/ for examples")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"budget file {str(path)!r} is not valid TOML: {exc}") from exc
    return parse_budget(_apply_overrides(raw, overrides or {}, str(path)), str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``"search.epochs=1"`` -> ``("search.epochs", 1)``; the value is read as TOML (strings may go unquoted)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise UserError(f"--set {text!r}: write SECTION.KEY=VALUE, e.g. --set search.epochs=1")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed
