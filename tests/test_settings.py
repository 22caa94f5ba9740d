"""Settings: defaults, TOML file, CDS_PLUGIN_* environment, clear errors."""

from __future__ import annotations

import json

import pytest

from cds_plugin.settings import SANDBOX_ISSUER, Settings, SettingsError


def test_safe_defaults():
    s = Settings.load(environ={})
    assert s.jwt_required is True and s.trusted_issuers == () and s.issuers == ()
    assert s.bind.startswith("127.0.0.1:") and s.torch_threads == 1
    assert s.effective_database_url.startswith("sqlite:///") and s.fhir_fetch_budget_s == 3.0


def test_environment_overrides_toml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'workers = 4\nbind = "0.0.0.0:9000"\nfhir_open_servers = ["http://a/fhir"]\n'
        '[[trusted_issuers]]\niss = "https://ehr.example"\njwks_url = "https://ehr.example/jwks"\n'
    )
    s = Settings.load(environ={"CDS_PLUGIN_CONFIG": str(toml), "CDS_PLUGIN_WORKERS": "3"})
    assert s.workers == 3 and s.bind == "0.0.0.0:9000" and s.fhir_open_servers == ("http://a/fhir",)
    assert s.trusted_issuers[0].iss == "https://ehr.example"


def test_issuers_from_env_json():
    value = json.dumps([{"iss": "https://a", "jwks_file": "/k.json", "jku_allow": ["https://a/jwks"]}])
    s = Settings.load(environ={"CDS_PLUGIN_TRUSTED_ISSUERS": value, "CDS_PLUGIN_JWT_REQUIRED": "yes"})
    assert s.trusted_issuers[0].jku_allow == ("https://a/jwks",)


def test_sandbox_trust_is_opt_in():
    s = Settings.load(environ={"CDS_PLUGIN_TRUST_PUBLIC_SANDBOX": "true"})
    sandbox = [i for i in s.issuers if i.iss == SANDBOX_ISSUER]
    assert sandbox and sandbox[0].jwks_file.endswith("sandbox_jwks.json")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CDS_PLUGIN_WORKERS": "many"}, "CDS_PLUGIN_WORKERS"),
        ({"CDS_PLUGIN_WORKERS": "0"}, "CDS_PLUGIN_WORKERS"),
        ({"CDS_PLUGIN_JWT_REQUIRED": "perhaps"}, "CDS_PLUGIN_JWT_REQUIRED"),
        ({"CDS_PLUGIN_BIND": "8080"}, "CDS_PLUGIN_BIND"),
        ({"CDS_PLUGIN_TRUSTED_ISSUERS": "[{}]"}, "iss"),
        ({"CDS_PLUGIN_TRUSTED_ISSUERS": '[{"iss": "x"}]'}, "jwks_url"),
        ({"CDS_PLUGIN_CONFIG": "/nonexistent.toml"}, "CDS_PLUGIN_CONFIG"),
    ],
)
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.load(environ=env)
