"""The lean connections send what redis-py sends, byte for byte, with or without hiredis."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from orchestrator.store import resp
from orchestrator.store.connection import connect, connect_arq
from orchestrator.store.resp import HIREDIS_PACKER, LeanConnection, LeanPool, lean_pool


class _Color(enum.StrEnum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


class _Text(str):
    pass


# What the store sends: names, keys, JSON as str and bytes, counts, scores, TTLs.
COMMANDS: list[tuple[Any, ...]] = [
    ("GET", "k"),
    ("SET", b"k", b"v", "PX", 60000),
    ("EVALSHA", "a" * 40, 2, "k1", b"k2", '{"type":"x","v":1}', b"\x00\xff", -5, 0, 2**70),
    ("ZADD", "z", 1.5, "m", 0.1, "n", 1e20, "o", 1e-7, "p", -0.0, "q", 123456789.123456789, "r"),
    ("ZADD", "z", float("inf"), "a", float("-inf"), "b", 5e-324, "c", 1.7976931348623157e308, "d"),
    ("SET", "üñí€😀", memoryview(b"mv")),
    ("SET", "", b""),
    ("SET", "big", "x" * 10_000, b"y" * 7_000),
    ("SET", _Text("sub"), _Color.RED),
    ("HSET", "h", "level", _Level.HIGH),  # redis-py sends repr(): hiredis refuses, we fall back
    ("SCRIPT LOAD", "return 1"),
    (b"CONFIG GET", "maxmemory"),
    ("CLIENT SETINFO", "LIB-NAME", "x"),
]


def _lean_connection(pool: ConnectionPool) -> Any:
    return lean_pool(pool).make_connection()  # type: ignore[no-untyped-call]


def _redis_py(*args: Any) -> bytes:
    return b"".join(bytes(chunk) for chunk in Connection().pack_command(*args))


def _lean(*args: Any) -> bytes:
    conn = _lean_connection(ConnectionPool())
    assert isinstance(conn, LeanConnection)
    return b"".join(bytes(chunk) for chunk in conn.pack_command(*args))


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]) if isinstance(a, tuple) else "")
def test_lean_connections_pack_every_argument_type_as_redis_py_does(args: tuple[Any, ...]) -> None:
    assert _lean(*args) == _redis_py(*args)


@pytest.mark.skipif(HIREDIS_PACKER is None, reason="hiredis is not installed")
def test_hiredis_packs_the_common_commands() -> None:
    assert HIREDIS_PACKER is not None
    args = ("EVALSHA", "a" * 40, 1, "k", b"payload", 7, 2.5)
    assert resp.pack_command(args, _fail) == [HIREDIS_PACKER(args)]


@pytest.mark.skipif(HIREDIS_PACKER is None, reason="hiredis is not installed")
def test_lean_connections_pack_with_hiredis(monkeypatch: pytest.MonkeyPatch) -> None:
    packed: list[tuple[Any, ...]] = []

    def recording(args: tuple[Any, ...]) -> bytes:
        packed.append(args)
        assert HIREDIS_PACKER is not None
        return HIREDIS_PACKER(args)

    monkeypatch.setattr(resp, "HIREDIS_PACKER", recording)
    conn = _lean_connection(ConnectionPool())
    conn.pack_command("GET", "k")
    conn.pack_commands([("GET", "a"), ("SET", "b", 1)])
    assert packed == [(b"GET", "k"), (b"GET", "a"), (b"SET", "b", 1)]


def _fail(*args: Any) -> list[bytes]:
    raise AssertionError(f"fell back to redis-py for {args!r}")


@pytest.mark.parametrize("value", [True, None, bytearray(b"x"), {"a": 1}, [1]])
def test_arguments_redis_py_refuses_are_refused_with_its_data_error(value: Any) -> None:
    with pytest.raises(redis_errors.DataError):
        _redis_py("SET", "k", value)
    with pytest.raises(redis_errors.DataError):
        _lean("SET", "k", value)


def test_pipelined_commands_are_packed_as_redis_py_packs_them() -> None:
    conn = _lean_connection(ConnectionPool())
    packed = b"".join(bytes(chunk) for chunk in conn.pack_commands(COMMANDS[:9]))
    expected = Connection().pack_commands(COMMANDS[:9])
    assert packed == b"".join(bytes(chunk) for chunk in expected)


def test_without_hiredis_commands_are_packed_by_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resp, "HIREDIS_PACKER", None)
    for args in COMMANDS:
        assert _lean(*args) == _redis_py(*args)
    with pytest.raises(redis_errors.DataError):
        _lean("SET", "k", True)


def test_a_non_utf8_encoding_is_left_to_redis_py() -> None:
    pool = lean_pool(ConnectionPool(encoding="latin-1"))
    conn = _lean_connection(pool)
    packed = b"".join(bytes(chunk) for chunk in conn.pack_command("SET", "k", "é"))
    assert packed.endswith(b"$1\r\n\xe9\r\n")


@pytest.mark.parametrize(
    "plain",
    [
        Connection,
        SSLConnection,
        UnixDomainSocketConnection,
        SentinelManagedConnection,
        SentinelManagedSSLConnection,
    ],
)
def test_every_redis_py_connection_class_has_a_lean_sibling(plain: type[Any]) -> None:
    pool = lean_pool(ConnectionPool(connection_class=plain))
    assert issubclass(pool.connection_class, plain)
    assert issubclass(pool.connection_class, LeanConnection)


def test_a_connection_class_of_the_callers_own_is_kept() -> None:
    class Mine(Connection):
        pass

    assert lean_pool(ConnectionPool(connection_class=Mine)).connection_class is Mine


def test_a_redis_py_the_lean_classes_were_not_checked_against_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resp, "LEAN_SUPPORTED", False)
    assert lean_pool(ConnectionPool(connection_class=Connection)).connection_class is Connection
    client = connect("redis://127.0.0.1:1/0")
    assert not issubclass(client.connection_pool.connection_class, LeanConnection)


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("redis://127.0.0.1:1/0", Connection),
        ("rediss://127.0.0.1:1/0", SSLConnection),
        ("unix:///tmp/nowhere.sock", UnixDomainSocketConnection),
        ("redis+sentinel://127.0.0.1:1/mymaster", SentinelManagedConnection),
    ],
)
async def test_connect_and_connect_arq_make_lean_connections(url: str, plain: type[Any]) -> None:
    for client in (connect(url), connect_arq(url, "q")):
        assert isinstance(client.connection_pool, LeanPool)
        cls = client.connection_pool.connection_class
        assert issubclass(cls, plain)
        assert issubclass(cls, LeanConnection)
        await client.aclose()
