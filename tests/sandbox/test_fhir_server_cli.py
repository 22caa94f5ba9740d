"""`cds-plugin sandbox fhir-server`: options, errors, and the foreground server in a real process."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from cds_plugin.sandbox.fhir_server import DEFAULT_PORT, TOKEN_ENV, add_arguments, run


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_bind_loopback_on_8090(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    args = parse("--data", "some/dir")
    assert args.data == Path("some/dir")
    assert args.host == "127.0.0.1"
    assert args.port == DEFAULT_PORT == 8090
    assert args.token is None
    assert args.page_size == 50


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert parse("--data", "d").token == "from-env"
    assert parse("--data", "d", "--token", "flag").token == "flag"


def test_data_is_required() -> None:
    with pytest.raises(SystemExit):
        parse()


def test_bad_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse("--data", str(tmp_path / "missing"), "--port", "0")) == 2
    assert "no such file" in capsys.readouterr().err
    assert run(parse("--data", str(tmp_path), "--page-size", "0")) == 2


def test_busy_port_exits_1(fhir_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert run(parse("--data", str(fhir_data), "--port", str(port))) == 1
    assert "cannot listen" in capsys.readouterr().err


def test_foreground_server_prints_its_url_and_stops_on_ctrl_c(fhir_data: Path) -> None:
    code = (
        "import argparse, sys; from cds_plugin.sandbox import fhir_server as f; "
        "p = argparse.ArgumentParser(); f.add_arguments(p); sys.exit(f.run(p.parse_args(sys.argv[1:])))"
    )
    argv = [sys.executable, "-c", code, "--data", str(fhir_data), "--port", "0", "--token", "t0k"]
    # a test run started in the background of a script inherits SIGINT ignored (and Python then installs
    # no Ctrl-C handler): give the server the default, as in a terminal
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("FHIR R4 server at http://127.0.0.1:"), line
            assert "2 Patient" in line
            base = line.split()[4]
            assert base.endswith("/fhir")
            assert requests.get(f"{base}/metadata", timeout=5).status_code == 200
            assert requests.get(f"{base}/Patient/p1", timeout=5).status_code == 401
            ok = requests.get(f"{base}/Patient/p1", headers={"Authorization": "Bearer t0k"}, timeout=5)
            assert ok.status_code == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_client_option_registers_a_jwks_or_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cds_plugin.sandbox.keys import ClientKey
    from cds_plugin.sandbox.smart_auth import parse_client_option

    _, jwks = ClientKey.generate(kid="k").write(tmp_path / "keys")
    assert parse("--data", "d", "--client", f"bulk={jwks}").client == [f"bulk={jwks}"]
    assert parse_client_option(f"bulk={jwks}") == ("bulk", str(jwks))
    assert run(parse("--data", str(tmp_path), "--client", "no-equals-sign")) == 2
    assert "expected ID=JWKS_FILE" in capsys.readouterr().err
    assert run(parse("--data", str(tmp_path), "--client", f"bulk={tmp_path / 'missing.json'}")) == 2
    assert "cannot read JWK Set file" in capsys.readouterr().err
