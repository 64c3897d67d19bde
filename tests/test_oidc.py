"""Bearer JWTs from an identity provider, verified with PyJWT against a JWKS file the
test makes: signature, issuer, audience and expiry checked; role and scope from claims."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from monitor.api.app import create_app
from monitor.api.context import ApiContext
from monitor.core.rulebook import load_rules
from monitor.core.yamlfile import ConfigError
from monitor.evaluation.runner import Evaluator
from monitor.platform.access import AccessBook, load_access, token_hash
from monitor.platform.config import load_settings
from monitor.platform.metrics import Metrics
from monitor.store.embedded import EmbeddedStore
from monitor.store.state import SqliteState

REPO = Path(__file__).resolve().parent.parent
ISSUER, AUDIENCE = "https://idp.test/realms/metrology", "meter-state-monitor"


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    algo = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    data: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig"}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [_jwk(rsa_key, "r1"), _jwk(ec_key, "e1")]})
    )
    spec = {
        "tokens": [
            {"name": "ops", "role": "operator", "scope": ["*"], "sha256": token_hash("plain")}
        ],
        "oidc": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": "jwks.json"},
    }
    (tmp_path / "access.yaml").write_text(yaml.safe_dump(spec))
    return {"rsa": rsa_key, "ec": ec_key, "book": load_access(tmp_path / "access.yaml")}


def _token(key: Any, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "wang.li",
        "iat": now,
        "exp": now + 300,
        "monitor_role": "authority",
        "monitor_scope": "D01 D02",
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def test_a_valid_token_gives_role_and_scope_from_its_claims(keys: dict[str, Any]) -> None:
    book: AccessBook = keys["book"]
    who = book.authenticate(_token(keys["rsa"], "r1"))
    assert who is not None and who.via == "oidc"
    assert (who.name, who.role, who.scope) == ("wang.li", "authority", frozenset({"D01", "D02"}))
    ec_who = book.authenticate(_token(keys["ec"], "e1", monitor_scope=["*"]))
    assert ec_who is not None and ec_who.everywhere
    assert book.authenticate("plain") is not None  # the access file's own tokens still work


@pytest.mark.parametrize(
    "why,claims",
    [
        ("expired", {"exp": int(time.time()) - 3600}),
        ("another audience", {"aud": "someone-else"}),
        ("another issuer", {"iss": "https://evil.test"}),
        ("no role", {"monitor_role": None}),
        ("an unknown role", {"monitor_role": "admin"}),
        ("no scope", {"monitor_scope": None}),
        ("no expiry", {"exp": None}),
    ],
)
def test_a_token_that_does_not_hold_is_refused(
    keys: dict[str, Any], why: str, claims: dict[str, Any]
) -> None:
    assert keys["book"].authenticate(_token(keys["rsa"], "r1", **claims)) is None, why


def test_a_forged_signature_is_refused(keys: dict[str, Any]) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert keys["book"].authenticate(_token(stranger, "r1")) is None
    assert keys["book"].authenticate(_token(stranger, "unknown-kid")) is None
    # a token signed with the public key as an HMAC secret (algorithm confusion)
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 60,
        "monitor_role": "authority",
        "monitor_scope": "*",
    }
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "r1"})  # type: ignore[arg-type]
    assert keys["book"].authenticate(unsigned) is None


def test_the_api_takes_an_oidc_token(tmp_path: Path, keys: dict[str, Any]) -> None:
    state = SqliteState(tmp_path / "state.sqlite")
    store = EmbeddedStore(tmp_path / "telemetry.sqlite", Metrics())
    book = load_rules(REPO / "config" / "rules.yaml")
    ctx = ApiContext(
        load_settings(tmp_path / "none", {}),
        state,
        store,
        Metrics(),
        lambda: True,
        Evaluator(store, state),
        lambda: book,
        access=lambda: keys["book"],
    )
    client = TestClient(create_app(ctx))
    token = _token(keys["ec"], "e1")
    me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me == {
        "name": "wang.li",
        "role": "authority",
        "scope": ["D01", "D02"],
        "via": "oidc",
        "open_mode": False,
    }
    r = client.post("/api/evaluate", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "needs role operator" in r.json()["detail"]
    expired = _token(keys["ec"], "e1", exp=int(time.time()) - 3600)
    assert client.get("/api/me", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    state.close()
    store.close()


def test_an_access_file_with_a_bad_oidc_block_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "access.yaml"
    path.write_text("tokens: []\noidc:\n  issuer: x\n  audience: y\n  jwks_file: missing.json\n")
    with pytest.raises(ConfigError, match="jwks_file"):
        load_access(path)
    path.write_text(
        "tokens: []\noidc:\n  issuer: x\n  audience: y\n  jwks_file: j.json\n  algorithms: [HS256]\n"
    )
    with pytest.raises(ConfigError, match="public-key"):
        load_access(path)
