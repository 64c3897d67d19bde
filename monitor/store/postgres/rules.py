"""Shadow rules and promotions in PostgreSQL: the `core.ports.RulesShelf` of a cluster.

A candidate uploaded through one worker is every worker's candidate; the latest shadow
comparison is the cluster's; a promotion through any worker is logged once and its text
becomes the cluster's rules in force (`evaluation.shadow.PromotedRules`).
"""

from __future__ import annotations

import json
from typing import Any

from monitor.store.postgres.db import Database


class PostgresShelf:
    """Rules texts, the uploaded candidate, the shadow report and promotions, shared.

    shelf = PostgresShelf(db)
    """

    shared = True

    def __init__(self, db: Database) -> None:
        self._db = db

    def upload(self) -> tuple[str, str] | None:
        row = self._db.one("SELECT text FROM rules_upload WHERE id = 1")
        return None if row is None else ("uploaded (state database)", str(row[0]))

    def put_upload(self, text: str) -> None:
        with self._db.connection() as conn:
            conn.execute(
                "INSERT INTO rules_upload (id, text) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET text = excluded.text, at = now()",
                (text,),
            )

    def drop_upload(self) -> bool:
        with self._db.connection() as conn:
            return conn.execute("DELETE FROM rules_upload WHERE id = 1").rowcount > 0

    def report(self) -> str | None:
        row = self._db.one("SELECT body FROM rules_shadow WHERE id = 1")
        return None if row is None else str(row[0])

    def put_report(self, text: str) -> None:
        with self._db.connection() as conn:
            conn.execute(
                "INSERT INTO rules_shadow (id, body) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                (text,),
            )

    def kept(self) -> dict[str, str]:
        rows = self._db.rows("SELECT digest, text FROM rules_texts ORDER BY digest")
        return {str(d): str(t) for d, t in rows}

    def knows(self, digest: str) -> bool:
        return self._db.one("SELECT 1 FROM rules_texts WHERE digest = %s", [digest]) is not None

    def promote(
        self, record: dict[str, Any], texts: dict[str, str], to_digest: str, drop_upload: bool
    ) -> None:
        with self._db.transaction() as conn:
            for digest, text in texts.items():
                conn.execute(
                    "INSERT INTO rules_texts (digest, text) VALUES (%s, %s) "
                    "ON CONFLICT (digest) DO NOTHING",
                    (digest, text),
                )
            conn.execute(
                "INSERT INTO rules_promotions (body, to_digest) VALUES (%s, %s)",
                (json.dumps(record, ensure_ascii=False), to_digest),
            )
            if drop_upload:
                conn.execute("DELETE FROM rules_upload WHERE id = 1")

    def promotions(self) -> list[dict[str, Any]]:
        rows = self._db.rows("SELECT body FROM rules_promotions ORDER BY seq")
        return [json.loads(r[0]) for r in rows]

    def promoted(self) -> tuple[str, str] | None:
        row = self._db.one(
            "SELECT t.digest, t.text FROM rules_promotions p JOIN rules_texts t "
            "ON t.digest = p.to_digest ORDER BY p.seq DESC LIMIT 1"
        )
        return None if row is None else (str(row[0]), str(row[1]))
