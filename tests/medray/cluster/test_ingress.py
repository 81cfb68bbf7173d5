"""The HTTP front door's settings (medray.cluster.ingress): per-node files and ports, the operator's
own values kept, the Python proxy on request."""

from __future__ import annotations

import pytest

from medray.cluster.ingress import INGRESS_SETTINGS, ingress_dir, ingress_env
from medray.errors import ConfigError


def test_each_node_gets_its_own_files_and_ports(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDRAY_INGRESS", raising=False)
    a, b = (ingress_env(tmp_path / str(n), env={}) for n in (0, 1))
    assert {k: a[k] for k in INGRESS_SETTINGS} == INGRESS_SETTINGS
    for key in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
                "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT"):
        assert a[key] != b[key], key
    # Serve puts the node ID (56 characters) between the folder and the socket; HAProxy allows 97.
    socket = ingress_dir("0123456789abcdef", 12) / "admin.sock"
    assert len(str(socket)) + 57 <= 97, socket


def test_the_operators_values_are_kept(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDRAY_INGRESS", raising=False)
    env = ingress_env(tmp_path, env={"RAY_SERVE_HAPROXY_NBTHREAD": "4"})
    assert "RAY_SERVE_HAPROXY_NBTHREAD" not in env and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_the_python_proxy_on_request_and_a_clear_error_for_a_typo(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDRAY_INGRESS", "proxy")
    assert ingress_env(tmp_path, env={}) == {}
    monkeypatch.setenv("MEDRAY_INGRESS", "haproxi")
    with pytest.raises(ConfigError, match="MEDRAY_INGRESS='haproxi': use one of haproxy, proxy"):
        ingress_env(tmp_path, env={})
