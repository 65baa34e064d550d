"""The auth domain may carry a port, so a loopback edge can name itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.access.runtime import settings_from_config
from edge.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("written", "kept"),
    [("auth.localhost:8443", "auth.localhost:8443"), ("Auth.Example.COM.", "auth.example.com"),
     ("auth.example.com", "auth.example.com")],
)
def test_auth_domain_with_or_without_port(written: str, kept: str, tmp_path: Path) -> None:
    config = parse_config({"access": {"auth_domain": written}}, config_dir=tmp_path)
    assert config.access.auth_domain == kept
    settings = settings_from_config(config)
    assert settings.auth_host == kept.partition(":")[0]
    assert settings.issuer == f"http://{kept}"  # only a plain-HTTP public listener


@pytest.mark.parametrize("written", ["auth.localhost:0", "auth.localhost:65536",
                                     "auth.localhost:08443", "auth.localhost:x", "*.example.com"])
def test_bad_auth_domains_name_their_key(written: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^access\.auth_domain: "):
        parse_config({"access": {"auth_domain": written}}, config_dir=tmp_path)
