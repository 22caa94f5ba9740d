"""Service settings: safe defaults, overridden by an optional TOML file, then by `CDS_PLUGIN_*` variables.

Every field is documented in docs/configuration.md. Precedence (last wins): defaults, the TOML file named
by `CDS_PLUGIN_CONFIG` (or passed explicitly), environment variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CDS_PLUGIN_"

#: The public CDS Hooks sandbox (https://sandbox.cds-hooks.org) signs with a key whose private half is
#: published; trusting it is for development only.
SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class TrustedIssuer:
    """A CDS client allowed to call us: its `iss`, where its keys come from, which `jku` it may name.

    `jwks_file` pins the key set (no fetching); otherwise keys come from the token's `jku` (only if
    listed in `jku_allow`) or from `jwks_url`.
    """

    iss: str
    jwks_url: str | None = None
    jwks_file: str | None = None
    jku_allow: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrustedIssuer:
        if not isinstance(data, Mapping) or not data.get("iss"):
            raise SettingsError("trusted_issuers: every issuer needs an 'iss'")
        unknown = set(data) - {"iss", "jwks_url", "jwks_file", "jku_allow"}
        if unknown:
            raise SettingsError(f"trusted_issuers[{data['iss']}]: unknown keys {sorted(unknown)}")
        if not data.get("jwks_url") and not data.get("jwks_file") and not data.get("jku_allow"):
            raise SettingsError(
                f"trusted_issuers[{data['iss']}]: give jwks_url, jwks_file or jku_allow so keys can be found"
            )
        return cls(
            iss=str(data["iss"]),
            jwks_url=data.get("jwks_url"),
            jwks_file=data.get("jwks_file"),
            jku_allow=tuple(data.get("jku_allow") or ()),
        )


def _sandbox_issuer() -> TrustedIssuer:
    jwks = Path(__file__).parent / "hooks" / "data" / "sandbox_jwks.json"
    return TrustedIssuer(iss=SANDBOX_ISSUER, jwks_file=str(jwks), jku_allow=(SANDBOX_JKU,))


@dataclass(frozen=True)
class Settings:
    """All configuration of one service instance. Build with `Settings.load()`."""

    # Storage
    data_dir: str = "var"
    database_url: str = ""  # empty: a SQLite file in data_dir
    # Serving
    bind: str = "127.0.0.1:8080"
    workers: int = 2
    threads: int = 1
    timeout_s: int = 30
    torch_threads: int = 1
    public_base_url: str = ""  # e.g. https://cds.example.org when behind a proxy; used for `aud` checks
    max_body_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64  # nesting of a request body and of each FHIR server answer (413 above)
    max_string_bytes: int = 1024 * 1024  # longest single JSON string, keys included (413 above)
    max_entries: int = 20_000  # FHIR resources in one hook call, request and fetched data together
    cors_origins: tuple[str, ...] = ("*",)
    log_level: str = "INFO"
    metrics_enabled: bool = True  # Prometheus metrics at /metrics (docs/monitoring.md)
    metrics_token: str = field(default="", repr=False)  # when set, /metrics needs this bearer token
    # Client trust (JWT)
    jwt_required: bool = True
    trusted_issuers: tuple[TrustedIssuer, ...] = ()
    trust_public_sandbox: bool = False
    jwt_leeway_s: int = 30
    jwt_max_lifetime_s: int = 3600
    jwks_cache_s: int = 3600
    # FHIR server fallback
    fhir_fetch_budget_s: float = 3.0
    fhir_max_pages: int = 10
    fhir_open_servers: tuple[str, ...] = ()  # FHIR base URLs we may query without an access token
    fhir_allow_http: bool = False  # plain-http FHIR servers beyond loopback (never in production)
    # Clinical services and their cards
    model_path: str = ""  # empty: the default model shipped in the package
    max_cards: int = 3  # most cards per service and call, best first
    override_snooze_days: int = 90  # a consideration overridden for a patient stays hidden this long; 0: off
    # HMAC key of the patient pseudonyms kept with issued cards; empty: a random one kept in data_dir
    pseudonym_secret: str = field(default="", repr=False)
    min_card_probability: float = 0.10  # no card below this calibrated probability, whatever the threshold
    # no card unless the patient's record multiplies the odds an empty record gets by at least this much
    min_card_odds_ratio: float = 2.0
    card_explanation_method: str = "integrated_gradients"  # the attribution on cards (docs/cards.md)
    # seconds the card attributions of one call may take; past it the cards carry attention x gradient
    card_explanation_budget_s: float = 0.3
    # integrated gradients queued after responses, per worker; beyond it they are computed when a page opens
    background_max_pending: int = 4
    explanation_ttl_s: int = 7 * 24 * 3600  # how long explanation pages (patient data) are kept
    link_secret: str = ""  # HMAC key of explanation links; empty: a random one kept in data_dir
    smart_launch_url: str = ""  # when set, cards carry a SMART app link
    shap_max_evals: int = 300  # SHAP budget (forward passes) when the view asks for it
    view_frame_ancestors: str = "'none'"  # CSP frame-ancestors of explanation pages (EHR embedding)
    # Extra keys the settings file carries for later components (kept, not interpreted here)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'cds_plugin.sqlite3'}"

    @property
    def issuers(self) -> tuple[TrustedIssuer, ...]:
        """Configured issuers plus the public sandbox when explicitly trusted."""
        if self.trust_public_sandbox and not any(i.iss == SANDBOX_ISSUER for i in self.trusted_issuers):
            return (*self.trusted_issuers, _sandbox_issuer())
        return self.trusted_issuers

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        toml_path: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults <- TOML file <- environment <- keyword overrides (used by tests and the CLI)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = toml_path or environ.get(ENV_PREFIX + "CONFIG")
        if path:
            try:
                with open(path, "rb") as fh:
                    values.update(tomllib.load(fh))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"{ENV_PREFIX}CONFIG: cannot read {path}: {exc}") from exc
        names = {f.name: f for f in dataclasses.fields(cls)}
        for name in names:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update(overrides)
        extra = {k: v for k, v in values.items() if k not in names}
        kwargs = {k: _coerce(names[k], v) for k, v in values.items() if k in names and k != "extra"}
        kwargs["extra"] = {**dict(values.get("extra") or {}), **extra}
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in (
            "workers",
            "threads",
            "timeout_s",
            "torch_threads",
            "fhir_max_pages",
            "max_body_bytes",
            "max_json_depth",
            "max_string_bytes",
            "max_entries",
            "max_cards",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: must be at least 1")
        if self.override_snooze_days < 0:
            raise SettingsError(f"{ENV_PREFIX}OVERRIDE_SNOOZE_DAYS: must be 0 or more")
        if self.pseudonym_secret and len(self.pseudonym_secret) < 16:
            raise SettingsError(f"{ENV_PREFIX}PSEUDONYM_SECRET: must be at least 16 characters")
        if self.background_max_pending < 0:
            raise SettingsError(f"{ENV_PREFIX}BACKGROUND_MAX_PENDING: must be 0 or more")
        if self.min_card_odds_ratio < 0:
            raise SettingsError(f"{ENV_PREFIX}MIN_CARD_ODDS_RATIO: must be 0 or more")
        if self.card_explanation_budget_s <= 0:
            raise SettingsError(f"{ENV_PREFIX}CARD_EXPLANATION_BUDGET_S: must be positive")
        if self.fhir_fetch_budget_s <= 0:
            raise SettingsError(f"{ENV_PREFIX}FHIR_FETCH_BUDGET_S: must be positive")
        if ":" not in self.bind and not self.bind.startswith("unix:"):
            raise SettingsError(f"{ENV_PREFIX}BIND: expected HOST:PORT, got {self.bind!r}")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type, with a clear error."""
    name = f.name
    kind = str(f.type)
    try:
        if name == "trusted_issuers":
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else []
            return tuple(TrustedIssuer.from_mapping(v) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind.startswith("tuple[str"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if kind == "str":
            return str(value)
        return value
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}: {exc}") from exc
