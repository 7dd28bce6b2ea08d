"""MariaDB/MySQL sources as an operator manages them with the apievents command."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import orjson
import pytest

from tests.support.mariadb import MARIADB_URL, mariadb_database, my_connect
from tests.support.processes import APIEVENTS, cli, cli_json, service_env

pytestmark = pytest.mark.acceptance
PASSWORD = "Pw-" + uuid.uuid4().hex  # never printed


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return service_env(database_url, "unused")


@pytest.fixture
def office_url() -> Iterator[str]:
    with mariadb_database() as url:
        yield url


@pytest.fixture
def limited_user(office_url: str) -> Iterator[str]:
    """A user of the office database with SELECT but without PROCESS; dropped afterwards."""
    user = f"apievents_t_{uuid.uuid4().hex[:8]}"
    database = office_url.rsplit("/", 1)[1]
    with my_connect(MARIADB_URL) as c:
        cur = c.cursor()
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (PASSWORD,))
        cur.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'127.0.0.1'")
    try:
        yield f"mysql://{user}:{PASSWORD}@127.0.0.1:3306/{database}"
    finally:
        with my_connect(MARIADB_URL) as c:
            c.cursor().execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


def one_line_error(done: subprocess.CompletedProcess[str], flag: str) -> None:
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"apievents: error: {flag}"), lines


def test_add_list_remove_never_show_the_password(env: dict[str, str]) -> None:
    url = f"mysql://od:{PASSWORD}@db.example:3306/opendental"
    added = cli_json(env, "sources", "add", "--name", "north", "--url", url)
    assert added == {
        "Source": "north",
        "Kind": "mysql",
        "Url": "mysql://od:***@db.example:3306/opendental",
        "CustomerKeys": [],
        "WatchTables": 0,
    }
    listed = cli(env, "sources", "list")
    assert PASSWORD not in listed.stdout + listed.stderr
    assert [s["Source"] for s in orjson.loads(listed.stdout)] == ["north"]
    assert cli_json(env, "sources", "remove", "north")["Source"] == "north"
    assert cli_json(env, "sources", "list") == []


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--name", "1north", "--url", "mysql://u@h:3306/db"], "--name:"),
        (["--name", "north", "--url", "postgresql://u@h/db"], "--url:"),
        (["--name", "north", "--url", "mysql://u:pw@h:3306"], "--url:"),
        (["--name", "north", "--url", "mysql://u@h/db", "--customer-key", ""], "--customer-key:"),
    ],
)
def test_bad_sources_are_one_line_and_nothing_is_written(
    env: dict[str, str], args: list[str], flag: str
) -> None:
    one_line_error(cli(env, "sources", "add", *args), flag)
    assert cli_json(env, "sources", "list") == []


def test_migrate_a_source_then_subscribe_by_source_or_customer_key(
    env: dict[str, str], office_url: str
) -> None:
    cli_json(env, "sources", "add", "--name", "south", "--url", office_url, "--customer-key", "CK1")
    one_line_error(cli(env, "migrate", "--source", "south"), "--source:")
    applied = cli_json(env, "migrate", "--opendental-schema", "--source", "south")["applied"]
    assert "WatchTable south.Appointment" in applied and "WatchTable south.Patient" in applied
    again = cli_json(env, "migrate", "--opendental-schema", "--source", "south")["applied"]
    assert not [a for a in again if a.startswith("WatchTable")]  # idempotent
    with my_connect(office_url) as c:  # every column but the key has a default
        c.cursor().execute("INSERT INTO appointment () VALUES ()")
        c.cursor().execute("INSERT INTO patient () VALUES ()")
    tables = {t["WatchTable"]: t for t in cli_json(env, "watch-tables", "list")}
    assert tables["south.Appointment"]["Source"] == "south"
    base = ["--endpoint-url", "http://localhost:2097/", "--polling-seconds", "5"]
    by_source = cli_json(
        env, "subscriptions", "add", *base, "--watch-table", "Appointment", "--source", "south"
    )
    assert by_source["WatchTable"] == "south.Appointment"
    by_customer = cli_json(
        env, "subscriptions", "add", *base, "--watch-table", "Patient", "--customer-key", "CK1"
    )
    assert by_customer["WatchTable"] == "south.Patient"
    one_line_error(
        cli(env, "subscriptions", "add", *base, "--watch-table", "Appointment", "--source", "x"),
        "--source:",
    )
    one_line_error(cli(env, "sources", "remove", "south"), "source 'south' has 3 WatchTable")
    assert len(cli_json(env, "subscriptions", "list")) == 2


def test_the_producer_refuses_a_source_user_without_process(
    database_url: str, limited_user: str
) -> None:
    env = service_env(database_url, f"t{uuid.uuid4().hex[:8]}")
    cli_json(env, "sources", "add", "--name", "blind", "--url", limited_user)
    done = subprocess.run(
        [APIEVENTS, "producer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("apievents: error:")]
    assert "PROCESS" in line and "blind" in line
    assert PASSWORD not in done.stderr + done.stdout
