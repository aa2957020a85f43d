"""`redis+sentinel://` URLs: parsed in the one connection builder, with clear errors."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.store.connection import SentinelTarget, connect, parse_sentinel_url


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://:pw@s1:26379,s2:26380,[::1]:26381/mymaster/2?sentinel_password=sp"
    )
    assert target == SentinelTarget(
        sentinels=(("s1", 26379), ("s2", 26380), ("::1", 26381)),
        service_name="mymaster",
        db=2,
        password="pw",
        sentinel_password="sp",
    )
    assert parse_sentinel_url("redis+sentinel://s1:26379/svc").db == 0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://s1/svc", "host:port"),
        ("redis+sentinel://s1:x/svc", "host:port"),
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1:26379/svc/zero", "must be a number"),
        ("redis+sentinel://s1:26379/svc/0/extra", "service_name"),
        ("redis+sentinel://s1:26379/svc?timeout=1", "unknown option"),
    ],
)
def test_a_malformed_sentinel_url_is_a_config_error_saying_what_is_wrong(
    url: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_sentinel_url(url)


def test_errors_never_echo_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_sentinel_url("redis+sentinel://:hunter2@s1:26379")
    assert "hunter2" not in str(caught.value)


async def test_connect_builds_a_sentinel_backed_client_with_the_same_timeouts() -> None:
    client = connect("redis+sentinel://127.0.0.1:1/svc/3", timeout_s=1.5, connect_timeout_s=0.5)
    pool = client.connection_pool
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["socket_timeout"] == 1.5
    assert pool.service_name == "svc"  # type: ignore[attr-defined]
    sentinel = pool.sentinel_manager.sentinels[0]  # type: ignore[attr-defined]
    assert sentinel.connection_pool.connection_kwargs["socket_timeout"] == 1.5
    await client.aclose()
