"""The schema of `config/rules.yaml`: every threshold of every rule, with its source.

A rule block carries `description`, `source` (the standard it comes from) and
`severity`; the numbers next to them are the defaults docs/metrology.md explains. A rules
file is identified by `name@version+hash`, where the hash is of its content,
and every decision records that identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from monitor.core.yamlfile import (
    ConfigError,
    ConfigProblem,
    load_yaml,
    parse_yaml,
    problems_from_validation,
)

AQLS = (0.65, 1.0, 1.5, 2.5)
LQS = (2.0, 3.15, 5.0, 8.0, 12.5, 20.0, 31.5)
Severity = Literal["critical", "major", "minor", "info"]


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Block):
    """What every rule states about itself."""

    description: str = Field(min_length=10)
    source: str = Field(min_length=2, description="standard or reference the default comes from")
    severity: Severity = "major"
    enabled: bool = True


class EstimationRule(Rule):
    """Energy-balance estimation of customer-meter errors in a transformer area."""

    forgetting_meter: float = Field(0.995, gt=0.9, le=1.0)
    forgetting_loss: float = Field(0.98, gt=0.5, le=1.0)
    ridge: float = Field(1.0, ge=0, description="Tikhonov weight pulling β toward 1")
    min_intervals: int = Field(300, ge=10)
    min_completeness: float = Field(0.99, ge=0, le=1)
    line_loss_min_pct: float = 0.0
    line_loss_max_pct: float = 10.0
    max_ci_halfwidth_pct: float = Field(1.5, gt=0)
    min_load_fraction_ib: float = Field(0.1, ge=0, le=1)
    ib_a: float = Field(5.0, gt=0, description="basic current of household meters, e.g. 5(60) A")
    min_information_ratio: float = Field(10.0, gt=0, description="data vs prior information")
    max_correlation: float = Field(
        0.95,
        gt=0,
        le=1,
        description="β posterior correlation with another meter's above "
        "which the two are not observable apart (collinear loads)",
    )
    max_residual_autocorrelation: float = Field(
        0.1,
        gt=-1,
        le=1,
        description="lag-1 autocorrelation of the balance's residuals above which they hold "
        "a slowly changing component no loss model describes: every estimate is unknown",
    )
    window_days: float = Field(30.0, gt=0, le=366)
    interval_s: int = Field(900, ge=60)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    master_uncertainty_pct: float | None = Field(
        None,
        ge=0,
        description="standard uncertainty of the master meter's error (Type B, common to "
        "the district); None: its class's verification MPE / √3 (rectangular, GUM)",
    )
    master_class: str = Field("0.5S", description="class of a master the registry leaves blank")

    @model_validator(mode="after")
    def _loss_band(self) -> EstimationRule:
        if self.line_loss_max_pct <= self.line_loss_min_pct:
            raise ValueError("line_loss_max_pct must exceed line_loss_min_pct")
        return self


class ErrorLimitRule(Rule):
    """In-service error limit by accuracy class and the watch band below it."""

    in_service_limit_pct: dict[str, float] = {"2": 3.5, "1": 1.75}
    verification_mpe_pct: dict[str, float] = {"2": 2.0, "1": 1.0, "0.5S": 0.5, "0.2S": 0.2}
    watch_fraction: float = Field(
        0.6, gt=0, le=1, description="|error| above this share of the limit → watch"
    )

    @model_validator(mode="after")
    def _positive(self) -> ErrorLimitRule:
        for table in (self.in_service_limit_pct, self.verification_mpe_pct):
            for cls, limit in table.items():
                if limit <= 0:
                    raise ValueError(f"limit of class {cls} must be positive")
        return self


class FunctionFailureRule(Rule):
    """Running fast, running backwards, stopped (JJF(冀)174-2020 Annex A)."""

    imax_a: float = Field(60.0, gt=0)
    un_v: float = Field(220.0, gt=0)
    stopped_min_current_a: float = Field(0.1, gt=0)
    backwards_tolerance_kwh: float = Field(0.0, ge=0)
    stopped_min_energy_kwh: float = Field(0.2, gt=0)


class ClockRule(Rule):
    """Meter clock offset and clock events."""

    max_offset_s: float = Field(300.0, gt=0)
    events: list[str] = ["clock_error", "clock_battery_low"]


class EventRule(Rule):
    """Event codes that are findings by themselves."""

    codes: list[str] = Field(min_length=1)
    lookback_days: float = Field(
        365.0, gt=0, description="an event stays a finding this long (no case closure yet)"
    )


class SamplingPlan(_Block):
    """How a lot in doubt is sampled: ISO 2859-1 by AQL, or ISO 2859-2 procedure A by LQ."""

    kind: Literal["iso2859-1", "iso2859-2"] = "iso2859-1"
    inspection_level: Literal["II"] = "II"
    aql: float | None = Field(
        None,
        description="acceptance quality limit, percent nonconforming (iso2859-1; default 1.0)",
    )
    lq: float | None = Field(
        None, description="limiting quality, percent nonconforming (iso2859-2, required)"
    )

    @model_validator(mode="after")
    def _quality_level(self) -> SamplingPlan:
        if self.kind == "iso2859-1":
            if self.lq is not None:
                raise ValueError("lq belongs to iso2859-2 plans; iso2859-1 takes an aql")
            if self.aql is not None and self.aql not in AQLS:
                raise ValueError(f"AQL {self.aql} has no column in the table; use one of {AQLS}")
        else:
            if self.aql is not None:
                raise ValueError("aql belongs to iso2859-1 plans; iso2859-2 takes an lq")
            if self.lq not in LQS:
                raise ValueError(f"iso2859-2 needs an lq with a column in the table: one of {LQS}")
        return self

    @property
    def quality_pct(self) -> float:
        """The AQL or LQ the plan is indexed by (an ISO 2859-1 plan's AQL defaults to 1.0)."""
        if self.kind == "iso2859-2":
            assert self.lq is not None
            return self.lq
        return self.aql if self.aql is not None else 1.0


class LotFamily(_Block):
    """Which lots a family plan applies to: every field given must match the lot's meters."""

    manufacturer: str | None = None
    model: str | None = None
    accuracy_class: str | None = None

    @model_validator(mode="after")
    def _something(self) -> LotFamily:
        if self.manufacturer is None and self.model is None and self.accuracy_class is None:
            raise ValueError("a family names at least one of manufacturer, model, accuracy_class")
        return self

    def matches(self, manufacturer: str | None, model: str | None, cls: str | None) -> bool:
        """Whether a lot of this manufacturer, model and class belongs to the family."""
        wanted = (
            (self.manufacturer, manufacturer),
            (self.model, model),
            (self.accuracy_class, cls),
        )
        return all(want is None or want == have for want, have in wanted)


class FamilyPlan(_Block):
    """The sampling plan of one family of lots."""

    family: LotFamily
    plan: SamplingPlan


class LotRule(Rule):
    """Lot decisions: extend, resample, replace."""

    horizon_months: int = Field(12, ge=0, le=60)
    extend_years: int = Field(4, ge=1, le=10)
    max_faulty_share: float = Field(0.01, ge=0, le=1)
    reject_faulty_share: float = Field(0.05, ge=0, le=1)
    max_suspect_share: float = Field(0.02, ge=0, le=1)
    min_evaluable_share: float = Field(0.6, ge=0, le=1)
    error_quantile: float = Field(0.95, gt=0, lt=1)
    error_quantile_max_fraction: float = Field(0.5, gt=0, le=1)
    plan: SamplingPlan = SamplingPlan()
    family_plans: list[FamilyPlan] = Field(
        default_factory=list,
        description="plans for families of lots (first match wins); other lots take `plan`",
    )

    def plan_for(
        self, manufacturer: str | None, model: str | None, accuracy_class: str | None
    ) -> SamplingPlan:
        """The plan of the first family the lot belongs to, else the default plan."""
        for family in self.family_plans:
            if family.family.matches(manufacturer, model, accuracy_class):
                return family.plan
        return self.plan

    @model_validator(mode="after")
    def _order(self) -> LotRule:
        if self.reject_faulty_share < self.max_faulty_share:
            raise ValueError("reject_faulty_share must be at least max_faulty_share")
        return self


class ElecRules(_Block):
    estimation: EstimationRule
    error_limit: ErrorLimitRule
    function_failure: FunctionFailureRule
    clock: ClockRule
    tamper: EventRule
    hardware: EventRule
    lot: LotRule


class DistanceRule(Rule):
    """Taxi distance bias against GNSS (JJG 517: +1 % / −4 %)."""

    window_days: float = Field(60.0, gt=0, le=366, description="trips considered per evaluation")
    min_trip_km: float = Field(3.0, gt=0)
    suspect_ratio: float = Field(1.10, gt=1)
    gross_ratio: float = Field(1.30, gt=1)
    window_trips: int = Field(100, ge=5)
    min_trips: int = Field(30, ge=5)
    limit_high_pct: float = 1.0
    limit_low_pct: float = -4.0
    guard_high_pct: float = 0.5
    guard_low_pct: float = -3.0
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="two-sided level of δ's interval (error_ci_pct)"
    )
    guard_band_on: Literal["interval", "estimate"] = Field(
        "interval",
        description="resample when δ's whole interval leaves the guard band (or δ passes the "
        "limit), or, as before 2026.2, when δ alone leaves it",
    )
    gross_trips_per_month: int = Field(3, ge=1)
    cusum_k: float = Field(0.5, gt=0)
    cusum_h: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _bands(self) -> DistanceRule:
        if (
            not self.limit_low_pct
            <= self.guard_low_pct
            < self.guard_high_pct
            <= self.limit_high_pct
        ):
            raise ValueError("need limit_low ≤ guard_low < guard_high ≤ limit_high")
        if self.gross_ratio <= self.suspect_ratio:
            raise ValueError("gross_ratio must exceed suspect_ratio")
        return self


class FareRule(Rule):
    """Fare recomputation against the tariff in force."""

    tolerance_display_steps: float = Field(1.0, ge=0)
    tolerance_rel: float = Field(0.001, ge=0)
    systematic_share: float = Field(0.2, gt=0, le=1)


class SealRule(Rule):
    """Seal breaks and parameter changes outside a work order."""

    codes: list[str] = ["seal_broken", "param_changed"]


class TariffRule(Rule):
    """Tariff rollout compliance."""

    deadline_h: float = Field(24.0, gt=0)


class ExtensionRule(Rule):
    """When a healthy taxi meter's period is extended instead of re-verified."""

    horizon_days: int = Field(60, ge=0, le=366)
    extend_years: int = Field(1, ge=1, le=5)


class TaxiRules(_Block):
    distance: DistanceRule
    fare: FareRule
    seal: SealRule
    tariff: TariffRule
    extension: ExtensionRule


class Rules(_Block):
    """The whole rules file."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(min_length=1)
    elec: ElecRules
    taxi: TaxiRules


@dataclass(frozen=True)
class RuleBook:
    """Validated rules plus their identity."""

    rules: Rules
    digest: str
    source: str

    @property
    def version(self) -> str:
        """`name@version+hash`, recorded on every decision."""
        return f"{self.rules.name}@{self.rules.version}+{self.digest[:12]}"


def parse_rules(text: str, source: str) -> RuleBook:
    """Validate rules text; a ConfigError lists every problem with its line."""
    loaded = parse_yaml(text, source)
    if not isinstance(loaded.data, dict):
        raise ConfigError([ConfigProblem(source, 1, "", "expected a mapping")])
    try:
        rules = Rules.model_validate(loaded.data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(exc, loaded, source)) from exc
    return RuleBook(rules, hashlib.sha256(text.encode("utf-8")).hexdigest(), source)


def load_rules(path: Path) -> RuleBook:
    """Read and validate a rules file."""
    loaded = load_yaml(path)
    return parse_rules(loaded.text, str(path))


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths and leaf values of a model dump, for diffs."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def diff(old: RuleBook, new: RuleBook) -> list[str]:
    """Human lines saying which settings a new rules file changes."""
    a = dict(flatten(old.rules.model_dump(mode="json")))
    b = dict(flatten(new.rules.model_dump(mode="json")))
    lines = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            lines.append(f"{key}: {a.get(key, '(unset)')!r} → {b.get(key, '(unset)')!r}")
    return lines
