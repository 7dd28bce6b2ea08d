"""Signatures, retries by the book, SSRF at connect time, hostile endpoints, attempts, rewind."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from apievents.common import subscriptions
from tests.integration.conftest import caught_up, insert_appointments, state, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver, Reply, sleep_then, status
from tests.support.services import LOOPBACK_POLICY, Pipeline, fast_settings

S1 = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
S2 = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkw"  # 32 bytes


def verifies(secret: str, batch: Any) -> bool:
    try:
        Webhook(secret).verify(batch.body, batch.headers)
    except WebhookVerificationError:
        return False
    return True


def pipeline_with(database_url: str, prefix: str, **settings: Any) -> Pipeline:
    return Pipeline(fast_settings(database_url, prefix, **settings))


# -- signatures -----------------------------------------------------------------------------


def test_deliveries_verify_with_the_reference_library_through_a_rotation(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    num = subscribe(conn, receiver.url(), secret=S1)
    insert_appointments(conn, 3)
    pipeline.start_all()
    wait_for(lambda: len(receiver.batches()) == 1, 30, "first batch")
    first = receiver.batches()[0]
    assert verifies(S1, first) and not verifies(S2, first)
    assert first.headers["webhook-id"].startswith("msg_")
    assert int(first.headers["webhook-timestamp"]) > 1_700_000_000

    subscriptions.update(conn, num, {"secret": S2}, LOOPBACK_POLICY, secret_overlap=3600)
    insert_appointments(conn, 2)
    wait_for(lambda: len(receiver.batches()) == 2, 30, "batch during the overlap")
    during = receiver.batches()[1]
    assert during.headers["webhook-signature"].count("v1,") == 2
    assert verifies(S1, during) and verifies(S2, during)

    subscriptions.update(conn, num, {"secret": S2}, LOOPBACK_POLICY, secret_overlap=0)
    insert_appointments(conn, 1)
    wait_for(lambda: len(receiver.batches()) == 3, 30, "batch after the overlap")
    after = receiver.batches()[2]
    assert verifies(S2, after) and not verifies(S1, after)


def test_webhook_id_is_stable_for_the_same_batch_across_retries(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.behaviours["/r"] = lambda n: 500 if n == 0 else 200
    subscribe(conn, receiver.url("/r"))
    insert_appointments(conn, 5)
    pipeline.start_all()
    wait_for(lambda: len(receiver.batches("/r")) == 2, 30, "the retry")
    failed, retried = receiver.batches("/r")
    assert failed.body == retried.body
    assert failed.headers["webhook-id"] == retried.headers["webhook-id"]


def test_replaced_secrets_are_cleared_once_their_overlap_ends(
    conn: psycopg.Connection[Any],
) -> None:
    ended = subscribe(conn, "http://127.0.0.1:9/", secret=S1)
    running = subscribe(conn, "http://127.0.0.1:9/", secret=S1)
    subscriptions.update(conn, ended, {"secret": S2}, LOOPBACK_POLICY, secret_overlap=0)
    subscriptions.update(conn, running, {"secret": S2}, LOOPBACK_POLICY, secret_overlap=3600)

    def previous() -> dict[int, Any]:
        rows = conn.execute(
            "SELECT subscription_num, previous_secret, previous_secret_expires_at IS NOT NULL "
            "FROM apievents.subscription"
        ).fetchall()
        return {num: (secret, expires) for num, secret, expires in rows}

    assert previous() == {ended: (S1, True), running: (S1, True)}
    assert subscriptions.clear_expired_secrets(conn) == 1
    assert previous() == {ended: (None, False), running: (S1, True)}
    assert subscriptions.clear_expired_secrets(conn) == 0
    assert state(conn, ended)["Status"] == "active"  # nothing else about it changed


def test_the_producer_clears_replaced_secrets_once_their_overlap_ends(
    conn: psycopg.Connection[Any], pipeline: Pipeline
) -> None:
    num = subscribe(conn, "http://127.0.0.1:9/", secret=S1)
    subscriptions.update(conn, num, {"secret": S2}, LOOPBACK_POLICY, secret_overlap=0)
    pipeline.start("producer")  # its periodic prune runs at once, then every minute
    wait_for(
        lambda: (
            conn.execute("SELECT previous_secret IS NULL FROM apievents.subscription").fetchone()
            == (True,)
        ),
        30,
        "the replaced secret to be forgotten",
    )


# -- responses and retries ------------------------------------------------------------------


def test_retry_after_is_honoured_on_503(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.behaviours["/busy"] = lambda n: Reply(503, {"Retry-After": "4"})
    num = subscribe(conn, receiver.url("/busy"))
    insert_appointments(conn, 1)
    p = pipeline_with(database_url, prefix, retry_cap_seconds=60).start_all()
    try:
        wait_for(lambda: state(conn, num)["ConsecutiveFailures"] == 1, 30, "the 503")
        (wait,) = conn.execute(  # type: ignore[misc]
            "SELECT next_attempt_at - now() FROM apievents.subscription "
            "WHERE subscription_num = %s",
            (num,),
        ).fetchone()
        assert timedelta(seconds=3) < wait <= timedelta(seconds=4)
    finally:
        p.stop_all()


def test_410_gone_disables_and_resume_re_enables(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.behaviours["/gone"] = status(410)
    num = subscribe(conn, receiver.url("/gone"))
    insert_appointments(conn, 2)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["Status"] == "disabled", 30, "disabled")
    assert state(conn, num)["StatusReason"] == "the endpoint answered 410 Gone"
    receiver.behaviours["/gone"] = status(200)
    assert subscriptions.set_status(conn, num, "active")["Status"] == "active"
    wait_for(lambda: len(receiver.delivered("/gone")) == 2, 30, "delivery after resume")


def test_continuous_failure_disables_after_the_configured_time(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.behaviours["/down"] = status(500)
    num = subscribe(conn, receiver.url("/down"))
    insert_appointments(conn, 1)
    p = pipeline_with(database_url, prefix, disable_after_seconds=1.5).start_all()
    try:
        wait_for(lambda: state(conn, num)["Status"] == "disabled", 30, "auto-disable")
    finally:
        p.stop_all()
    s = state(conn, num)
    assert s["StatusReason"].startswith("failing continuously since")
    assert s["ConsecutiveFailures"] >= 2  # it took several failures over 1.5 s


def test_redirects_are_failures_and_never_followed(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.behaviours["/moved"] = lambda n: Reply(302, {"Location": receiver.url("/target")})
    num = subscribe(conn, receiver.url("/moved"))
    insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 1, 30, "the 302")
    assert state(conn, num)["LastHttpStatus"] == 302
    assert receiver.batches("/target") == []


def test_a_huge_answer_is_read_only_in_part(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.behaviours["/big"] = lambda n: Reply(200, {}, b"x" * 10_000_000)
    num = subscribe(conn, receiver.url("/big"))
    keys = insert_appointments(conn, 3)
    pipeline.start_all()
    wait_for(lambda: caught_up(conn, num, keys), 30, "success")
    assert state(conn, num)["ConsecutiveFailures"] == 0
    assert [r["AptNum"] for r in receiver.delivered("/big")] == keys


@pytest.mark.parametrize(
    "behaviour, error_class",
    [
        (sleep_then(3), "timeout"),  # hangs past the 2 s timeout, then says 200: still a failure
        (lambda n: "close", "connection_error"),  # connection reset without an answer
    ],
)
def test_hanging_and_resetting_endpoints_fail(
    behaviour: Any,
    error_class: str,
    conn: psycopg.Connection[Any],
    pipeline: Pipeline,
    receiver: Receiver,
) -> None:
    receiver.behaviours["/bad"] = behaviour
    num = subscribe(conn, receiver.url("/bad"))
    insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 1, 30, "a failure")
    (attempt, *_) = subscriptions.attempts(conn, num)
    assert attempt["ErrorClass"] == error_class


@pytest.fixture
def garbage_server() -> Iterator[int]:
    """Answers every connection with bytes that are not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            with client:
                client.recv(65536)
                client.sendall(b"\x00\xffnot http at all\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def test_garbage_answers_are_failures(
    garbage_server: int, conn: psycopg.Connection[Any], pipeline: Pipeline
) -> None:
    num = subscribe(conn, f"http://127.0.0.1:{garbage_server}/")
    insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 1, 30, "a failure")
    assert state(conn, num)["LastHttpStatus"] is None
    assert subscriptions.attempts(conn, num)[0]["ErrorClass"] == "connection_error"


# -- SSRF at connect time -------------------------------------------------------------------


def test_dns_rebinding_to_a_metadata_address_is_refused_at_connect_time(
    monkeypatch: pytest.MonkeyPatch,
    conn: psycopg.Connection[Any],
    pipeline: Pipeline,
    receiver: Receiver,
) -> None:
    real = socket.getaddrinfo
    lookups = {"n": 0}

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.apievents.test":
            return real(host, port, *args, **kwargs)
        lookups["n"] += 1
        address = "127.0.0.1" if lookups["n"] == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.apievents.test:{receiver.port}/meta"
    num = subscribe(conn, url)  # at creation the name resolves to loopback: accepted
    insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: state(conn, num)["ConsecutiveFailures"] >= 1, 30, "the refusal")
    assert "169.254.169.254" in state(conn, num)["LastError"]
    assert subscriptions.attempts(conn, num)[0]["ErrorClass"] == "refused"
    assert receiver.batches("/meta") == []


def test_private_endpoints_are_denied_by_default_with_an_allow_list(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    denied = subscribe(conn, receiver.url("/denied"))  # created with the tests' loopback opt-in
    insert_appointments(conn, 1)
    p = pipeline_with(database_url, prefix, allowed_networks="").start_all()  # the defaults
    try:
        wait_for(lambda: state(conn, denied)["ConsecutiveFailures"] >= 1, 30, "refused")
        assert "private" in state(conn, denied)["LastError"]
        assert receiver.batches("/denied") == []
    finally:
        p.stop_all()
    allowed = subscribe(conn, receiver.url("/allowed"), date_time_start="2020-01-01T00:00:00Z")
    p = pipeline_with(database_url, prefix, allowed_networks="127.0.0.0/8").start_all()
    try:
        wait_for(lambda: len(receiver.delivered("/allowed")) == 1, 30, "allow-listed")
    finally:
        p.stop_all()
    assert state(conn, allowed)["ConsecutiveFailures"] == 0
    # APIEVENTS_DENY_PRIVATE_ENDPOINTS=0 keeps the old behaviour: loopback is an endpoint.
    opened = subscribe(conn, receiver.url("/open"), date_time_start="2020-01-01T00:00:00Z")
    p = pipeline_with(
        database_url, prefix, deny_private_endpoints=False, allowed_networks=""
    ).start_all()
    try:
        wait_for(lambda: len(receiver.delivered("/open")) == 1, 30, "denial turned off")
    finally:
        p.stop_all()
    assert state(conn, opened)["ConsecutiveFailures"] == 0


# -- attempt log and rewind -----------------------------------------------------------------


def test_attempts_are_logged_per_batch(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.behaviours["/a"] = lambda n: 500 if n == 1 else 200
    num = subscribe(conn, receiver.url("/a"))
    insert_appointments(conn, 1500)
    pipeline.start_all()
    wait_for(lambda: len(subscriptions.attempts(conn, num)) >= 3, 30, "attempts")
    newest_first = subscriptions.attempts(conn, num)
    log = list(reversed(newest_first))
    # The failed window kept the progress of its first batch: the retry starts after it.
    assert [(a["Batch"], a["Rows"], a["HttpStatus"]) for a in log[:3]] == [
        (1, 1000, 200),
        (2, 500, 500),
        (1, 500, 200),
    ]
    assert log[1]["ErrorClass"] == "http_error" and log[0]["ErrorClass"] is None
    assert all(a["LatencyMs"] >= 0 and a["WindowEnd"] for a in log)


def test_rewind_while_deliveries_run_resends_everything_since(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    receiver.behaviours["/rw"] = sleep_then(0.1)
    num = subscribe(conn, receiver.url("/rw"))
    created = state(conn, num)["DateTimeStart"]
    keys = insert_appointments(conn, 3000)
    p = pipeline_with(database_url, prefix, batch_size=100, checkpoint_batches=5).start_all()
    try:
        wait_for(lambda: len(receiver.batches("/rw")) >= 8, 30, "a window under way")
        rewound = subscriptions.rewind(conn, num, created)
        assert rewound["DateTimeStart"] == created  # the window in flight was revoked
        wait_for(
            lambda: (
                state(conn, num)["DateTimeStart"] > created
                and not state(conn, num)["InFlight"]
                and len(receiver.delivered("/rw")) >= 3000 + 800
            ),
            60,
            "the re-sent window",
        )
    finally:
        p.stop_all()
    got = [r["AptNum"] for r in receiver.delivered("/rw")]
    restart = max(i for i, k in enumerate(got) if k == keys[0])
    assert restart > 0  # the rewind re-sent from the first row...
    assert got[restart:] == keys  # ...all of them, in order, and the old window did not resume
    with pytest.raises(subscriptions.InputError, match="must not be later"):
        subscriptions.rewind(conn, num, "2999-01-01T00:00:00Z")
