"""Who may call the API: the access file (tokens by hash, roles, scopes) and OIDC tokens.

    book = load_access(Path("config/access.yaml"))     # ConfigError with line and reason
    who = book.authenticate(token)                     # a Principal, or None

The access file never holds a token, only its SHA-256 (`monitor access hash` prints
it). A JWT from an identity provider is verified with PyJWT against the configured
issuer, audience and JWKS (file or URL); its role and scope come from claims.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.core.yamlfile import (
    ConfigError,
    ConfigProblem,
    load_yaml,
    problems_from_validation,
)

log = logging.getLogger(__name__)

Role = Literal["authority", "utility", "operator", "auditor"]
ROLES: tuple[str, ...] = get_args(Role)
EVERYWHERE = "*"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name for the audit log, a role, a scope.

    `scope` holds region, district or lot names, or `*` for the whole fleet.
    """

    name: str
    role: str
    scope: frozenset[str]
    via: Literal["token", "oidc", "open"] = "token"

    @property
    def everywhere(self) -> bool:
        return EVERYWHERE in self.scope

    @property
    def open_mode(self) -> bool:
        return self.via == "open"


# Open mode (no access file, loopback only): everything allowed, named in the audit log.
OPEN_MODE = Principal("anonymous (open mode)", "open", frozenset({EVERYWHERE}), "open")


def token_hash(token: str) -> str:
    """The hex SHA-256 the access file stores for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenEntry(_Strict):
    """One API token of the access file."""

    name: str = Field(min_length=1, max_length=200)
    role: Role
    scope: list[str] = Field(min_length=1, description="region, district or lot names, or *")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the token")

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.strip():
                raise ValueError("a scope entry is empty")
        return value


class OidcSettings(_Strict):
    """Bearer JWTs from an identity provider: verified signature, issuer, audience, expiry."""

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    role_claim: str = "monitor_role"
    scope_claim: str = "monitor_scope"
    name_claim: str = "sub"
    leeway_s: float = Field(30.0, ge=0, le=600)

    @model_validator(mode="after")
    def _one_key_source(self) -> OidcSettings:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file or jwks_url")
        if any(a.lower() == "none" or a.startswith("HS") for a in self.algorithms):
            raise ValueError("only public-key algorithms (RS*, PS*, ES*, EdDSA) are accepted")
        return self


class AccessFile(_Strict):
    """The shape of `config/access.yaml`."""

    tokens: list[TokenEntry] = Field(default_factory=list)
    oidc: OidcSettings | None = None

    @model_validator(mode="after")
    def _distinct(self) -> AccessFile:
        hashes = [t.sha256 for t in self.tokens]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two tokens have the same sha256")
        names = [t.name for t in self.tokens]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"token name(s) used twice: {twice} (the audit log names them)")
        return self


class _JwtKeys:
    """Signing keys of an identity provider, from a JWKS file or URL (PyJWT)."""

    def __init__(self, cfg: OidcSettings, base: Path) -> None:
        self._client: jwt.PyJWKClient | None = None
        self._set: jwt.PyJWKSet | None = None
        if cfg.jwks_url is not None:
            self._client = jwt.PyJWKClient(cfg.jwks_url, cache_keys=True, timeout=10)
        else:
            assert cfg.jwks_file is not None
            path = cfg.jwks_file if cfg.jwks_file.is_absolute() else base / cfg.jwks_file
            self._set = jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))

    def key_for(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._set is not None
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self._set.keys
        found = [k for k in keys if kid is None or k.key_id == kid]
        if not found:
            raise jwt.InvalidTokenError(f"no key {kid!r} in the JWKS")
        return found[0].key


class AccessBook:
    """The tokens in force: who a bearer token is, or None."""

    def __init__(self, spec: AccessFile, base: Path) -> None:
        self.spec = spec
        self._by_hash = {t.sha256: t for t in spec.tokens}
        self._oidc = spec.oidc
        self._keys = _JwtKeys(spec.oidc, base) if spec.oidc is not None else None

    def authenticate(self, token: str) -> Principal | None:
        """The principal a token stands for; None for an unknown or invalid token."""
        if not token:
            return None
        if self._keys is not None and token.count(".") == 2:
            return self._from_jwt(token)
        digest = token_hash(token)
        for known, entry in self._by_hash.items():
            # Compare every hash in constant time: no timing says how close a guess was.
            if hmac.compare_digest(known, digest):
                return Principal(entry.name, entry.role, frozenset(entry.scope))
        return None

    def _from_jwt(self, token: str) -> Principal | None:
        cfg, keys = self._oidc, self._keys
        assert cfg is not None and keys is not None
        try:
            claims = jwt.decode(
                token,
                keys.key_for(token),
                algorithms=cfg.algorithms,
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            log.info("JWT refused: %s", exc)
            return None
        return principal_from_claims(claims, cfg)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.spec.tokens]


def principal_from_claims(claims: Mapping[str, Any], cfg: OidcSettings) -> Principal | None:
    """Role and scope from a verified token's claims; None when they are missing or wrong."""
    role = claims.get(cfg.role_claim)
    if isinstance(role, list):
        role = next((r for r in role if r in ROLES), None)
    if role not in ROLES:
        log.info("JWT of %r refused: claim %s is %r", claims.get("sub"), cfg.role_claim, role)
        return None
    raw = claims.get(cfg.scope_claim)
    scope = raw.split() if isinstance(raw, str) else raw
    if not isinstance(scope, list) or not scope or not all(isinstance(s, str) for s in scope):
        log.info("JWT of %r refused: claim %s is %r", claims.get("sub"), cfg.scope_claim, raw)
        return None
    name = str(claims.get(cfg.name_claim) or claims.get("sub") or "?")
    return Principal(name, str(role), frozenset(scope), "oidc")


def load_access(path: Path) -> AccessBook:
    """Read and check an access file; ConfigError with the line and reason when refused."""
    loaded = load_yaml(path)
    try:
        spec = AccessFile.model_validate(loaded.data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(exc, loaded, str(path))) from exc
    try:
        return AccessBook(spec, path.parent)
    except (OSError, json.JSONDecodeError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
        line = loaded.line_of(("oidc", "jwks_file"))
        raise ConfigError(
            [ConfigProblem(str(path), line, "oidc.jwks_file", f"cannot use the JWKS: {exc}")]
        ) from exc


def load_access_or_none(path: Path) -> AccessBook | None:
    """`load_access`, or None (open mode) when the file does not exist."""
    if not path.exists():
        return None
    return load_access(path)
