from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from apievents.common.messages import (
    Job,
    MessageError,
    Outcome,
    jobs_to_bytes,
    new_id,
    parse_jobs,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_job_round_trips_with_microseconds() -> None:
    job = Job(new_id(), 42, T0, T0 + timedelta(seconds=1), failures=3)
    assert Job.from_bytes(job.to_bytes()) == job


def test_outcome_round_trips() -> None:
    o = Outcome(
        new_id(),
        new_id(),
        7,
        T0,
        T0,
        1,
        ok=False,
        rows=10,
        batches=1,
        http_status=503,
        error_class="http_error",
        error="HTTP 503",
        retry_after=2.5,
    )
    assert Outcome.from_bytes(o.to_bytes()) == o


def test_messages_are_versioned_and_typed() -> None:
    body = orjson.loads(Job(new_id(), 1, T0, T0).to_bytes())
    assert body["v"] == 1 and body["type"] == "job"
    with pytest.raises(MessageError, match="expected outcome"):
        Outcome.from_bytes(Job(new_id(), 1, T0, T0).to_bytes())


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "type": "job"}',
        b'{"v": 1, "type": "job", "job_id": "x", "subscription": 1}',
        orjson.dumps(
            {
                "v": 1,
                "type": "job",
                "job_id": new_id(),
                "subscription": "1",
                "window_start": T0,
                "window_end": T0,
                "failures": 0,
            }
        ),
        orjson.dumps(
            {
                "v": 1,
                "type": "job",
                "job_id": new_id(),
                "subscription": 1,
                "window_start": "2026-01-01T00:00:00",
                "window_end": T0,
                "failures": 0,
            }
        ),
    ],
)
def test_malformed_jobs_are_refused(body: bytes) -> None:
    with pytest.raises(MessageError):
        Job.from_bytes(body)
    with pytest.raises(MessageError):
        parse_jobs(body)


def test_several_jobs_travel_in_one_message_and_one_job_in_the_old_form() -> None:
    jobs = [Job(new_id(), n, T0, T0 + timedelta(seconds=n), after_key=str(n)) for n in (1, 2, 3)]
    body = jobs_to_bytes(jobs)
    assert orjson.loads(body)["type"] == "jobs"
    assert parse_jobs(body) == jobs
    single = jobs_to_bytes(jobs[:1])
    assert Job.from_bytes(single) == jobs[0]  # what a worker of an earlier version reads
    assert parse_jobs(single) == jobs[:1]


@pytest.mark.parametrize(
    "items", [[], "x", [1], [{"job_id": "x"}]], ids=["empty", "not-a-list", "not-objects", "bad"]
)
def test_malformed_job_lists_are_refused(items: object) -> None:
    with pytest.raises(MessageError):
        parse_jobs(orjson.dumps({"v": 1, "type": "jobs", "items": items}))
    with pytest.raises(MessageError):  # an outcome is not a job
        parse_jobs(Outcome(new_id(), new_id(), 1, T0, T0, 0, ok=True).to_bytes())
