"""Shadow rules: a candidate rules file evaluated beside the one in force, then promoted.

An operator puts a candidate beside the rules in force (`config/rules.candidate.yaml`,
or an upload through the API, kept in the data directory; an upload wins). Every
recorded pass also evaluates the candidate as a dry run: nothing is stored,
published or alerted, no due date moves. `compare` lists, per meter and lot, where
the candidate decides differently and why (both sides' reasons), with counts by
decision change. `promote` makes the candidate the rules in force: one action,
written to the rules file and to the promotion log with who, when, the versions and
what changed. `rules backtest` is for the past; shadow is for the live stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.core.decision import Decision
from monitor.core.rulebook import RuleBook, diff, load_rules, parse_rules
from monitor.core.yamlfile import ConfigError
from monitor.evaluation.runner import EvaluationResult

CANDIDATE_NAME = "rules.candidate.yaml"
UPLOAD_NAME = "rules.candidate.uploaded.yaml"
PROMOTIONS_NAME = "rules-promotions.jsonl"
REPORT_NAME = "rules-shadow.json"
ARCHIVE_NAME = "rules-archive"


def _side(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "decision": d.decision,
        "state": d.state,
        "due_on": d.due_on.isoformat() if d.due_on else None,
        "new_due_on": d.new_due_on.isoformat() if d.new_due_on else None,
        "reasons": [r.as_dict() for r in d.reasons],
    }


def change_of(current: Decision | None, candidate: Decision | None) -> str:
    """ "extend→resample": the decision change between the two sides ("-" for none)."""
    before = current.decision if current else "-"
    after = candidate.decision if candidate else "-"
    return f"{before}→{after}"


@dataclass(frozen=True)
class ShadowReport:
    """Where the candidate decides differently from the rules in force, at one pass."""

    as_of: str
    rules_version: str
    candidate_version: str
    compared: dict[str, int]
    counts: dict[str, int]
    differences: list[dict[str, Any]] = field(default_factory=list)


def compare(current: EvaluationResult, candidate: EvaluationResult) -> ShadowReport:
    """Every meter and lot whose decision, state or new due date differ, both sides whole.

    `counts` are by decision change (`keep→extend`, …); a subject whose decision is the
    same but whose state or new due date differ counts under `extend→extend` and so on.
    """
    differences: list[dict[str, Any]] = []
    for scope, a, b in (
        ("meter", current.meters, candidate.meters),
        ("lot", current.lots, candidate.lots),
    ):
        for subject in sorted(a.keys() | b.keys()):
            x, y = a.get(subject), b.get(subject)
            sides = (_side(x), _side(y))
            keys = ("decision", "state", "new_due_on")
            if sides[0] and sides[1] and all(sides[0][k] == sides[1][k] for k in keys):
                continue
            either = x or y
            assert either is not None
            differences.append(
                {
                    "id": subject,
                    "scope": scope,
                    "kind": either.kind,
                    "change": change_of(x, y),
                    "current": sides[0],
                    "candidate": sides[1],
                }
            )
    counts = Counter[str](str(d["change"]) for d in differences)
    return ShadowReport(
        current.as_of,
        current.rules_version,
        candidate.rules_version,
        {"meters": len(current.meters), "lots": len(current.lots)},
        dict(sorted(counts.items())),
        differences,
    )


class CandidateError(ValueError):
    """A candidate that cannot be taken (invalid, or nothing to promote)."""


@dataclass(frozen=True)
class Promotion:
    """One promotion, as the promotion log keeps it."""

    at: str
    actor: str
    comment: str
    from_version: str
    to_version: str
    source: str
    changes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class RulesDesk:
    """The rules in force, the candidate beside them, and promotion.

    desk = RulesDesk(rules_file, data_dir, in_force=lambda: hot.current, reload=hot.check)
    desk.candidate()                 # the candidate RuleBook, or None
    desk.promote("ops", "after a month of shadow")
    """

    def __init__(
        self,
        rules_file: Path,
        data_dir: Path,
        in_force: Callable[[], RuleBook] | None = None,
        reload: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules_file = rules_file
        self.config_candidate = rules_file.parent / CANDIDATE_NAME
        self.upload_file = data_dir / UPLOAD_NAME
        self.log_file = data_dir / PROMOTIONS_NAME
        self._in_force = in_force or (lambda: load_rules(rules_file))
        self._reload = reload
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[str, RuleBook] | None = None
        self.last_error: str | None = None

    def in_force(self) -> RuleBook:
        return self._in_force()

    @property
    def report_file(self) -> Path:
        return self.log_file.with_name(REPORT_NAME)

    def observe(self, current: EvaluationResult, candidate: EvaluationResult) -> None:
        """Keep the comparison of a pass with the candidate's dry run (the latest only)."""
        report = compare(current, candidate)
        self.report_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.report_file, json.dumps(report.__dict__, ensure_ascii=False))

    def report(self) -> ShadowReport | None:
        """The latest comparison, or None before the first pass with a candidate."""
        try:
            body = json.loads(self.report_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return ShadowReport(**body)

    def source(self) -> Path | None:
        """The candidate's file: the upload if there is one, else the config one, else None."""
        for path in (self.upload_file, self.config_candidate):
            if path.is_file():
                return path
        return None

    def candidate(self) -> RuleBook | None:
        """The candidate rules, re-read when their file changed; None without a valid one."""
        path = self.source()
        if path is None:
            self.last_error = None
            return None
        text = path.read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            if self._cached is not None and self._cached[0] == digest:
                return self._cached[1]
            try:
                book = parse_rules(text, str(path))
            except ConfigError as exc:
                self.last_error = str(exc)
                return None
            self._cached, self.last_error = (digest, book), None
            return book

    def upload(self, text: str) -> RuleBook:
        """Validate and keep an uploaded candidate (ConfigError if invalid)."""
        book = parse_rules(text, "candidate")
        self.upload_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.upload_file, text)
        return book

    def withdraw(self) -> bool:
        """Drop the uploaded candidate; whether there was one."""
        try:
            self.upload_file.unlink()
        except FileNotFoundError:
            return False
        return True

    def promote(self, actor: str, comment: str = "") -> Promotion:
        """Make the candidate the rules in force: the rules file, the log, the reload."""
        path = self.source()
        if path is None:
            raise CandidateError(
                f"no candidate rules: put {self.config_candidate.name} beside the rules "
                "or upload one (PUT /api/rules/candidate)"
            )
        text = path.read_text(encoding="utf-8")
        new = parse_rules(text, str(path))
        old = self.in_force()
        if new.digest == old.digest:
            raise CandidateError(f"the candidate is the rules in force ({old.version})")
        if not os.access(self.rules_file.parent, os.W_OK):
            raise CandidateError(f"{self.rules_file.parent} is read-only: cannot write the rules")
        self._archive(self.rules_file.read_text(encoding="utf-8"), old)
        self._archive(text, new)
        promotion = Promotion(
            _wall(self._clock()),
            actor,
            comment,
            old.version,
            new.version,
            str(path),
            diff(old, new),
        )
        _write_atomically(self.rules_file, text)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a", encoding="utf-8") as log:
            log.write(json.dumps(promotion.as_dict(), ensure_ascii=False) + "\n")
        if path == self.upload_file:
            self.withdraw()
        if self._reload is not None:
            self._reload()
        return promotion

    def _archive(self, text: str, book: RuleBook) -> None:
        """Keep a rules text by its digest, so its version can be reported on later."""
        folder = self.log_file.parent / ARCHIVE_NAME
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{book.digest}.yaml"
        if not path.exists():
            _write_atomically(path, text)

    def book(self, name: str) -> RuleBook | None:
        """A rules version by name: "in-force", "candidate", or a version (`name@version+hash`,
        or a prefix of it) of the rules in force, the candidate or an earlier one kept when
        promoted; None when there is none."""
        if name == "in-force":
            return self.in_force()
        if name == "candidate":
            return self.candidate()
        for book in self.versions():
            if book.version == name or book.version.startswith(name):
                return book
        return None

    def versions(self) -> list[RuleBook]:
        """The rules in force, the candidate, and every version kept by promotions."""
        books = [self.in_force()]
        candidate = self.candidate()
        if candidate is not None:
            books.append(candidate)
        folder = self.log_file.parent / ARCHIVE_NAME
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            try:
                books.append(load_rules(path))
            except ConfigError:
                continue  # kept from a version whose schema has since changed
        unique: dict[str, RuleBook] = {}
        for b in books:
            unique.setdefault(b.digest, b)
        return list(unique.values())

    def promotions(self) -> list[Promotion]:
        """Every promotion, oldest first."""
        if not self.log_file.is_file():
            return []
        lines = self.log_file.read_text(encoding="utf-8").splitlines()
        return [Promotion(**json.loads(line)) for line in lines if line.strip()]


def _write_atomically(path: Path, text: str) -> None:
    """Write beside, then rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _wall(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
