"""Keys that recover: a key answered 401/403 rests for a cool-down, then serves again.

A fake clock makes the cool-downs exact here; tests/integration/test_llm_keys.py shows the
same over real HTTP and real time, and on a real worker process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.api.metrics import MetricsSnapshot, render
from orchestrator.errors import ConfigError, LLMHTTPError
from orchestrator.llm import APIKeyPool, FallbackLLM, OpenAICompatible, load_provider_file
from orchestrator.llm.benched import BenchedKeyReport, read_benched_keys, report_benched_keys
from orchestrator.llm.key_pool import NoUsableKey
from orchestrator.llm.testing import ReplayTransport, Reply, completion

pytestmark = pytest.mark.timeout(10)

MESSAGES = [{"role": "user", "content": "hi"}]
KEYS = ["sk-test-alpha-000001", "sk-test-bravo-000002", "sk-test-charlie-0003"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _model(pool: APIKeyPool, *replies: Reply, name: str = "m") -> OpenAICompatible:
    return OpenAICompatible(
        api_key_pool=pool,
        model_name=name,
        base_url="http://llm.test/v1",
        transport=ReplayTransport(replies or [Reply.json(completion("ok"))]),
        max_retries=0,
    )


def _sent_keys(model: OpenAICompatible) -> list[str]:
    transport = model._transport
    assert isinstance(transport, ReplayTransport)
    return list(transport.keys)


def test_a_benched_key_rests_for_the_cooldown_then_is_live_again() -> None:
    clock = Clock()
    pool = APIKeyPool(KEYS[:2], cooldown_s=60, clock=clock)
    pool.bench(KEYS[0], status=401, model="m")
    assert pool.live_keys == [KEYS[1]]
    clock.now += 59.9
    assert [pool.acquire() for _ in range(2)] == [KEYS[1], KEYS[1]]
    clock.now += 0.1
    assert pool.live_keys == KEYS[:2]
    assert pool.acquire() == KEYS[0]  # least recently used


def test_benched_keys_are_reported_by_index_with_the_time_left() -> None:
    clock = Clock()
    pool = APIKeyPool(KEYS, cooldown_s=30, clock=clock)
    pool.bench(KEYS[2], status=403, model="m")
    clock.now += 10
    pool.bench(KEYS[1], status=401, model="m")
    clock.now += 5
    (second, third) = pool.benched()
    assert (second.index, second.keys, second.status) == (2, 3, 401)
    assert second.retry_in_s == pytest.approx(25)
    assert (third.index, third.status, third.label) == (3, 403, "API key #3 of 3")
    assert third.retry_in_s == pytest.approx(15)


def test_a_second_rejection_of_a_resting_key_keeps_its_deadline() -> None:
    clock = Clock()
    pool = APIKeyPool(KEYS[:1], cooldown_s=10, clock=clock)
    pool.bench(KEYS[0], status=401, model="m")
    clock.now += 4
    again = pool.bench(KEYS[0], status=401, model="m")  # a request that was in flight
    assert again.retry_in_s == pytest.approx(6)


def test_with_every_key_resting_the_error_says_which_returns_first_and_when() -> None:
    clock = Clock()
    pool = APIKeyPool(KEYS[:2], cooldown_s=60, clock=clock)
    pool.bench(KEYS[1], status=403, model="m")
    clock.now += 20
    pool.bench(KEYS[0], status=401, model="m")
    with pytest.raises(NoUsableKey) as caught:
        pool.acquire()
    assert caught.value.retry_in_s == pytest.approx(40)
    assert str(caught.value) == (
        "all 2 API keys were rejected (HTTP 403) and rest after it; "
        "API key #2 of 2 is tried again in 40 s"
    )


def test_a_negative_cooldown_is_refused() -> None:
    with pytest.raises(ValueError, match="cooldown_s"):
        APIKeyPool(KEYS, cooldown_s=-1)
    with pytest.raises(ConfigError, match="cooldown_s"):
        OpenAICompatible(KEYS, "m", "http://llm.test/v1", key_cooldown_s=-1)
    with pytest.raises(ConfigError, match="own cooldown_s"):
        OpenAICompatible(
            api_key_pool=APIKeyPool(KEYS), model_name="m", base_url="http://x", key_cooldown_s=5
        )


def test_the_cooldown_comes_from_provider_json_or_the_constructor(tmp_path: Any) -> None:
    path = tmp_path / "provider.json"
    entry = {"model_name": "m", "api_keys": KEYS, "base_url": "http://x/v1"}
    path.write_text(
        json.dumps({"p": [{**entry, "key_cooldown_s": 5}, {**entry, "model_name": "n"}]})
    )
    models = OpenAICompatible.load_from_json_file(path)["p"]
    assert models["m"].key_pool.cooldown_s == 5
    assert models["n"].key_pool.cooldown_s == 60  # the default: about a minute
    assert load_provider_file(path)["p"][0].key_cooldown_s == 5
    assert OpenAICompatible(KEYS, "m", "http://x", key_cooldown_s=7).key_pool.cooldown_s == 7


async def test_a_rejected_lone_key_fails_the_call_by_index_then_fast_then_recovers() -> None:
    clock = Clock()
    key = KEYS[0]
    pool = APIKeyPool([key], cooldown_s=60, clock=clock)
    model = _model(pool, Reply.error(401, "bad key"), Reply.json(completion("back")))
    with pytest.raises(LLMHTTPError) as first:
        await model.chat(MESSAGES)
    assert first.value.status_code == 401
    assert str(first.value) == (
        "m: API key #1 of 1 was rejected (HTTP 401: bad key); no other key is usable now: "
        "API key #1 of 1 is tried again in 60 s"
    )
    clock.now += 45
    with pytest.raises(LLMHTTPError, match=r"tried again in 15 s") as fast:
        await model.chat(MESSAGES)
    assert fast.value.status_code == 401
    assert _sent_keys(model) == [key]  # failed fast: no request
    clock.now += 15
    answer = await model.chat(MESSAGES)
    assert answer["choices"][0]["message"]["content"] == "back"
    assert _sent_keys(model) == [key, key]


async def test_a_call_never_retries_a_key_it_saw_rejected_even_without_a_cooldown() -> None:
    pool = APIKeyPool(KEYS[:2], cooldown_s=0)
    model = _model(pool, Reply.error(403, "forbidden"))
    with pytest.raises(LLMHTTPError) as caught:
        await model.chat(MESSAGES)
    assert _sent_keys(model) == KEYS[:2]
    assert "API key #1 of 2 and API key #2 of 2 were rejected (HTTP 403: forbidden)" in str(
        caught.value
    )
    assert "no other key is left" in str(caught.value)


async def test_keys_never_appear_in_errors_or_logs_even_when_the_server_echoes_them() -> None:
    key = KEYS[1]
    model = _model(APIKeyPool([key]), Reply.error(401, f"Incorrect API key provided: {key}."))
    with capture_logs() as logs, pytest.raises(LLMHTTPError) as caught:
        await model.chat(MESSAGES)
    assert key not in str(caught.value)
    assert "Incorrect API key provided: ...0002." in str(caught.value)
    assert logs
    assert key not in repr(logs)
    assert [entry["key_index"] for entry in logs if entry["event"] == "llm.api_key_benched"] == [1]


def test_a_fallback_model_benched_after_a_401_is_tried_again_after_its_bench() -> None:
    clock = Clock()
    first = _model(APIKeyPool("k1"), Reply.error(401), name="a")
    second = _model(APIKeyPool("k2"), Reply.json(completion("b")), name="b")
    llm = FallbackLLM([first, second], bench_s=30, clock=clock)
    llm._give_up_on(0, LLMHTTPError("rejected", status_code=401))
    assert llm.benched == {0}
    clock.now += 30
    assert llm.benched == set()


def test_workers_report_benched_keys_of_every_model_once_and_readers_age_them() -> None:
    clock = Clock()
    shared = APIKeyPool(KEYS, "openai", cooldown_s=60, clock=clock)
    gpt = _model(shared, name="gpt")
    mini = _model(shared, name="gpt-mini")  # the same pool: reported once
    other = _model(APIKeyPool(KEYS[:1], cooldown_s=20, clock=clock), name="local")
    shared.bench(KEYS[1], status=401, model="gpt")
    other.key_pool.bench(KEYS[0], status=403, model="local")

    reported = report_benched_keys([FallbackLLM([gpt, other]), mini, gpt])

    assert reported == [
        {
            "model": "gpt",
            "provider": "openai",
            "key_index": 2,
            "keys": 3,
            "status": 401,
            "retry_in_s": 60.0,
        },
        {
            "model": "local",
            "provider": None,
            "key_index": 1,
            "keys": 1,
            "status": 403,
            "retry_in_s": 20.0,
        },
    ]
    assert not any(key in json.dumps(reported) for key in KEYS)
    beat = {"worker_id": "w1", "last_beat": 500.0, "benched_keys": [*reported, {"model": 3}]}
    with capture_logs() as logs:
        read = read_benched_keys(beat, now=530.0)  # 30 s after the beat
    assert [(k.model, k.key_index, k.retry_in_s) for k in read] == [("gpt", 2, 30.0)]
    assert [entry["event"] for entry in logs] == ["workers.bad_benched_key"]
    assert read_benched_keys({"benched_keys": "nonsense"}, now=0) == []


def test_metrics_show_benched_keys_per_worker_model_and_index() -> None:
    key = BenchedKeyReport(model='gp"t', key_index=2, keys=3, status=401, retry_in_s=41.25)
    text = render(
        MetricsSnapshot.from_runs(
            [],
            queue_depth=0,
            runs_by_status={},
            live_workers=1,
            open_api=False,
            benched_keys=[("host:1:abc", key)],
        )
    )
    assert "orchestrator_api_keys_benched 1" in text
    assert (
        'orchestrator_api_key_retry_seconds{worker="host:1:abc",model="gp\\"t",key="2",'
        'keys="3",status="401"} 41.25'
    ) in text
    empty = render(
        MetricsSnapshot.from_runs(
            [], queue_depth=0, runs_by_status={}, live_workers=0, open_api=False
        )
    )
    assert "orchestrator_api_keys_benched 0" in empty
