"""`apievents api` as a real process, with keys from `apievents api-keys`."""

from __future__ import annotations

import httpx
import pytest

from tests.acceptance.test_observability import free_port
from tests.support import wait_for
from tests.support.processes import Service, cli, cli_json, service_env

pytestmark = pytest.mark.acceptance


def test_api_serves_with_cli_managed_keys(database_url: str) -> None:
    port = free_port()
    env = service_env(database_url, "unused", APIEVENTS_API_PORT=str(port))
    created = cli_json(env, "api-keys", "create", "--customer-key", "office-1")
    assert created["CustomerKey"] == "office-1" and created["ApiKey"].startswith("apiev_")
    assert created["ApiKey"] not in str(cli_json(env, "api-keys", "list"))
    bad = cli(env, "api-keys", "create", "--customer-key", "")
    assert bad.returncode == 2 and bad.stderr.startswith("apievents: error: --customer-key")
    auth = {"Authorization": f"Bearer {created['ApiKey']}"}
    api = Service("api", env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), 30, "the API")
        r = httpx.post(
            f"{base}/subscriptions",
            headers=auth,
            json={
                "EndPointUrl": "http://localhost:2097/",
                "WatchTable": "Patient",
                "PollingSeconds": 10,
            },
        )
        assert r.status_code == 201 and r.json()["CustomerKey"] == "office-1"
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "apievents"
        pair = cli_json(
            env, "api-keys", "create", "--customer-key", "office-1", "--developer-key", "DK1"
        )
        assert pair == {"CustomerKey": "office-1", "DeveloperKey": "DK1"}
        again = cli(
            env, "api-keys", "create", "--customer-key", "office-1", "--developer-key", "DK1"
        )
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
        od = {"Authorization": "ODFHIR DK1/office-1"}
        (listed,) = httpx.get(f"{base}/api/v1/subscriptions", headers=od).json()
        assert listed["DateTimeStop"] == "0001-01-01 00:00:00" and listed["UiEventType"] == ""
        assert httpx.get(f"{base}/readyz").status_code == 200
        revoked = cli_json(env, "api-keys", "revoke", "--api-key", created["ApiKey"])
        assert [k["CustomerKey"] for k in revoked] == ["office-1"]
        assert httpx.get(f"{base}/subscriptions", headers=auth).status_code == 401
        assert api.terminate() == 0, api.output()
    finally:
        api.close()


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
