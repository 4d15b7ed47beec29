"""Exposure of a local Ray (runtime/orchestration/exposure.py): the token file owner-only, a warning when token auth
is switched off, and what Ray 2.60 does with a loopback node address (why we cannot bind it there)."""

from __future__ import annotations

import logging
import stat

from wsrl_dist.runtime.orchestration import exposure


def test_a_readable_token_file_is_made_owner_only(tmp_path, monkeypatch):
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert exposure.tighten_token_file() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert exposure.tighten_token_file(tmp_path / "absent") is None


def test_disabled_token_auth_is_warned_about(monkeypatch, caplog):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with caplog.at_level(logging.WARNING, logger="wsrl_dist.runtime.orchestration.exposure"):
        assert exposure.warn_if_auth_disabled()
    assert "RAY_AUTH_MODE=disabled" in caplog.text
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert not exposure.warn_if_auth_disabled()


def test_ray_turns_a_loopback_node_address_into_a_routable_one():
    """The reason runtime/orchestration/exposure.py relies on token auth instead of 127.0.0.1: if a Ray release
    starts honouring loopback here, this fails and the driver can pass _node_ip_address."""
    from ray._private import services

    assert services.resolve_ip_for_localhost("127.0.0.1") == services.get_node_ip_address()
