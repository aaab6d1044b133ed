"""Several forwarder URLs (replicas) in the client's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfabric.client.config import ClientConfig, parse_urls
from taskfabric.errors import ConfigError


def test_replica_urls_come_from_a_list_or_a_comma_separated_string() -> None:
    assert parse_urls(["http://a:1/", "http://b:2"]) == ("http://a:1", "http://b:2")
    assert parse_urls(" http://a:1 ,https://b/,http://a:1") == ("http://a:1", "https://b")


@pytest.mark.parametrize("bad", ["", "http://a,", ",http://a", "ftp://a", "a.example.org", []])
def test_bad_replica_urls_are_refused_naming_the_problem(bad: str | list[str]) -> None:
    with pytest.raises(ConfigError, match="URL"):
        parse_urls(bad, source="TASKFABRIC_URL")


def test_replica_urls_from_the_environment_and_saved_by_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFABRIC_HOME", str(tmp_path))
    monkeypatch.setenv("TASKFABRIC_URL", "http://127.0.0.1:1,http://127.0.0.1:2")
    monkeypatch.setenv("TASKFABRIC_TOKEN", "t")
    config = ClientConfig.resolve()
    assert (config.url, config.urls) == ("http://127.0.0.1:1", ("http://127.0.0.1:1", "http://127.0.0.1:2"))
    config.save()
    monkeypatch.delenv("TASKFABRIC_URL")
    assert ClientConfig.resolve().urls == config.urls
    assert ClientConfig(url="http://x", token="t").urls == ("http://x",)  # one URL: as before
    insecure = ClientConfig(url="http://127.0.0.1:1", token="t", urls=("http://127.0.0.1:1", "http://10.1.2.3:2"))
    with pytest.raises(ConfigError, match=r"10\.1\.2\.3"):
        insecure.check_secure(allow_insecure=False)  # every URL is checked, not just the first
