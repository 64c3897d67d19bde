"""Shadow rules: a candidate rules file evaluated beside the one in force, then promoted.

An operator puts a candidate beside the rules in force (`config/rules.candidate.yaml`,
or an upload through the API; an upload wins). Uploads, the latest comparison, the
promotion log and the rules texts kept by promotions live on a `RulesShelf`: files in
the data directory, or, for a cluster, the shared state database (`store.postgres.rules`),
so that a candidate uploaded or promoted through one worker is every worker's. Every
recorded pass also evaluates the candidate as a dry run: nothing is stored,
published or alerted, no due date moves. `compare` lists, per meter and lot, where
the candidate decides differently and why (both sides' reasons), with counts by
decision change. `promote` makes the candidate the rules in force: one action,
written to the rules file and to the promotion log with who, when, the versions and
what changed. `rules backtest` is for the past; shadow is for the live stream.

On files, promotion writes the rules file (the service's hot reload takes it). On a
shared shelf the promoted text is the cluster's rules in force (`PromotedRules`): every
worker takes it at its next reload check, whatever its own rules file says, until that
file is changed to a text the cluster has not had in force (a new deployment's rules).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.core.decision import Decision
from monitor.core.ports import RulesShelf, StateUnavailable
from monitor.core.rulebook import RuleBook, diff, load_rules, parse_rules
from monitor.core.yamlfile import ConfigError
from monitor.evaluation.runner import EvaluationResult
from monitor.platform.reload import HotFile

log = logging.getLogger(__name__)

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


class FileShelf:
    """A `RulesShelf` of files in the data directory (one process's, or one host's)."""

    shared = False

    def __init__(self, data_dir: Path) -> None:
        self.upload_file = data_dir / UPLOAD_NAME
        self.log_file = data_dir / PROMOTIONS_NAME
        self.report_file = data_dir / REPORT_NAME
        self.archive = data_dir / ARCHIVE_NAME

    def upload(self) -> tuple[str, str] | None:
        try:
            return str(self.upload_file), self.upload_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def put_upload(self, text: str) -> None:
        self.upload_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.upload_file, text)

    def drop_upload(self) -> bool:
        try:
            self.upload_file.unlink()
        except FileNotFoundError:
            return False
        return True

    def report(self) -> str | None:
        try:
            return self.report_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def put_report(self, text: str) -> None:
        self.report_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.report_file, text)

    def kept(self) -> dict[str, str]:
        if not self.archive.is_dir():
            return {}
        return {p.stem: p.read_text(encoding="utf-8") for p in sorted(self.archive.glob("*.yaml"))}

    def promote(
        self, record: dict[str, Any], texts: dict[str, str], to_digest: str, drop_upload: bool
    ) -> None:
        self.archive.mkdir(parents=True, exist_ok=True)
        for digest, text in texts.items():
            path = self.archive / f"{digest}.yaml"
            if not path.exists():
                _write_atomically(path, text)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a", encoding="utf-8") as log:
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
        if drop_upload:
            self.drop_upload()

    def promotions(self) -> list[dict[str, Any]]:
        if not self.log_file.is_file():
            return []
        lines = self.log_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def promoted(self) -> tuple[str, str] | None:
        """Files: the rules file is what promotion writes, nothing is kept beside it."""
        return None

    def knows(self, digest: str) -> bool:
        return (self.archive / f"{digest}.yaml").is_file()


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
        shelf: RulesShelf | None = None,
    ) -> None:
        self.rules_file = rules_file
        self.config_candidate = rules_file.parent / CANDIDATE_NAME
        self.shelf: RulesShelf = shelf or FileShelf(data_dir)
        self._in_force = in_force or (lambda: load_rules(rules_file))
        self._reload = reload
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[str, RuleBook] | None = None
        self.last_error: str | None = None

    def in_force(self) -> RuleBook:
        return self._in_force()

    def observe(self, current: EvaluationResult, candidate: EvaluationResult) -> None:
        """Keep the comparison of a pass with the candidate's dry run (the latest only)."""
        report = compare(current, candidate)
        self.shelf.put_report(json.dumps(report.__dict__, ensure_ascii=False))

    def report(self) -> ShadowReport | None:
        """The latest comparison, or None before the first pass with a candidate."""
        text = self.shelf.report()
        return None if text is None else ShadowReport(**json.loads(text))

    def _candidate_text(self) -> tuple[str, str] | None:
        """The candidate's source and text: the upload if there is one, else the config
        file, else None."""
        uploaded = self.shelf.upload()
        if uploaded is not None:
            return uploaded
        try:
            return str(self.config_candidate), self.config_candidate.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def source(self) -> str | None:
        """Where the candidate comes from (a file, or the shared state), None without one."""
        found = self._candidate_text()
        return None if found is None else found[0]

    def candidate(self) -> RuleBook | None:
        """The candidate rules, re-read when their text changed; None without a valid one."""
        found = self._candidate_text()
        if found is None:
            self.last_error = None
            return None
        path, text = found
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
        self.shelf.put_upload(text)
        return book

    def withdraw(self) -> bool:
        """Drop the uploaded candidate; whether there was one."""
        return self.shelf.drop_upload()

    def promote(self, actor: str, comment: str = "") -> Promotion:
        """Make the candidate the rules in force: the log, the rules (the file, or on a
        shared shelf the cluster's promoted text), the reload."""
        found = self._candidate_text()
        if found is None:
            raise CandidateError(
                f"no candidate rules: put {self.config_candidate.name} beside the rules "
                "or upload one (PUT /api/rules/candidate)"
            )
        path, text = found
        new = parse_rules(text, path)
        old = self.in_force()
        if new.digest == old.digest:
            raise CandidateError(f"the candidate is the rules in force ({old.version})")
        shared = self.shelf.shared
        if not shared and not os.access(self.rules_file.parent, os.W_OK):
            raise CandidateError(f"{self.rules_file.parent} is read-only: cannot write the rules")
        promotion = Promotion(
            _wall(self._clock()),
            actor,
            comment,
            old.version,
            new.version,
            path,
            diff(old, new),
        )
        # Both texts kept by digest, so their versions can be reported on later (and, on
        # a shared shelf, the in-force one is known to the cluster: see PromotedRules).
        texts = {new.digest: text}
        if old.digest not in self.shelf.kept():
            texts[old.digest] = self._text_of(old)
        if not shared:
            _write_atomically(self.rules_file, text)
        uploaded = self.shelf.upload() is not None
        self.shelf.promote(promotion.as_dict(), texts, new.digest, drop_upload=uploaded)
        if self._reload is not None:
            self._reload()
        return promotion

    def _text_of(self, book: RuleBook) -> str:
        """The text of the rules in force: the rules file's, or a promoted one kept."""
        kept = self.shelf.kept().get(book.digest)
        return kept if kept is not None else self.rules_file.read_text(encoding="utf-8")

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
        for digest, text in self.shelf.kept().items():
            try:
                books.append(parse_rules(text, f"{ARCHIVE_NAME}/{digest}.yaml"))
            except ConfigError:
                continue  # kept from a version whose schema has since changed
        unique: dict[str, RuleBook] = {}
        for b in books:
            unique.setdefault(b.digest, b)
        return list(unique.values())

    def promotions(self) -> list[Promotion]:
        """Every promotion, oldest first."""
        return [Promotion(**body) for body in self.shelf.promotions()]


class PromotedRules(HotFile[RuleBook]):
    """The rules in force of a worker on a shared shelf (a cluster).

    rules = PromotedRules(Path("config/rules.yaml"), load_rules, shelf)
    rules.check()   # the file's changes, and promotions made through any worker

    The rules file's, until a promotion is on the shelf; then the promoted text, for as
    long as the file holds a text the cluster has known (in force or promoted before).
    A file changed to a text the cluster has never had is a new deployment's rules: it
    is in force again, until the next promotion.
    """

    def __init__(self, path: Path, loader: Callable[[Path], RuleBook], shelf: RulesShelf) -> None:
        super().__init__(path, loader)
        self._shelf = shelf
        self._promoted: RuleBook | None = None
        try:
            self._pick()
        except StateUnavailable as exc:  # the file's rules until the state is back
            log.warning("rules: promotions not read yet (%s)", exc)

    @property
    def current(self) -> RuleBook:
        return self._promoted or super().current

    def check(self) -> bool:
        """Reload the file and look for a promotion; True when the rules in force changed."""
        before = self.current.digest
        super().check()
        self._pick()
        return self.current.digest != before

    def _pick(self) -> None:
        found = self._shelf.promoted()
        file_book = super().current
        if found is None or found[0] == file_book.digest or not self._shelf.knows(file_book.digest):
            self._promoted = None
            return
        digest, text = found
        if self._promoted is None or self._promoted.digest != digest:
            self._promoted = parse_rules(text, f"promoted rules {digest[:12]} (state database)")


def _write_atomically(path: Path, text: str) -> None:
    """Write beside, then rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _wall(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
