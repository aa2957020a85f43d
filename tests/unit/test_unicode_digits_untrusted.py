"""Numbers read from untrusted text (job ids from the queue, Redis URLs) are ASCII digits:
"²" or "①", which str.isdigit() accepts and int() refuses, are refused as malformed, not
raised as a ValueError from deep inside."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.store.batches import parse_item_job_id
from orchestrator.store.connection import parse_sentinel_url


@pytest.mark.parametrize("job_id", ["batch:b1:²", "batch:b1:3:r①", "batch:b1:①:r2"])
def test_a_batch_item_job_id_with_non_ascii_digits_is_no_item_job_id(job_id: str) -> None:
    assert parse_item_job_id(job_id) is None


def test_a_batch_item_job_id_with_ascii_digits_still_parses() -> None:
    assert parse_item_job_id("batch:b1:3:r2") == ("b1", 3, 2)


@pytest.mark.parametrize(
    "url", ["redis+sentinel://h1:2637①/svc", "redis+sentinel://h1:26379/svc/²"]
)
def test_a_sentinel_url_with_non_ascii_digits_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_sentinel_url(url)
