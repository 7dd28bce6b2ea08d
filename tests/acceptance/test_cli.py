"""The apievents command as an operator uses it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.support.processes import cli, cli_json, service_env
from tests.support.services import admin, db_url

pytestmark = pytest.mark.acceptance

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes
ALL_FIELDS = {
    "SubscriptionNum",
    "EndPointUrl",
    "Workstation",
    "CustomerKey",
    "WatchTable",
    "PollingSeconds",
    "DateTimeStart",
    "DateTimeStop",
    "Note",
    "Status",
    "LastError",
    "ConsecutiveFailures",
    "NextAttempt",
}


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return service_env(database_url, "unused")


@pytest.fixture
def empty_env() -> Iterator[dict[str, str]]:
    name = f"apievents_t_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield service_env(db_url(name), "unused")
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def add(env: dict[str, str], *extra: str) -> dict[str, object]:
    return cli_json(
        env,
        "subscriptions",
        "add",
        "--endpoint-url",
        "http://localhost:2097/",
        "--watch-table",
        "Appointment",
        "--polling-seconds",
        "5",
        *extra,
    )


def count(env: dict[str, str]) -> int:
    return len(cli_json(env, "subscriptions", "list"))


def test_migrate_is_idempotent_and_creates_the_sample_schema(empty_env: dict[str, str]) -> None:
    first = cli_json(empty_env, "migrate", "--sample-schema")
    assert "0001_initial.sql" in first["applied"]
    again = cli_json(empty_env, "migrate", "--sample-schema")
    assert again["applied"] == ["sample.sql"]
    names = [w["WatchTable"] for w in cli_json(empty_env, "watch-tables", "list")]
    assert names == ["Appointment", "AppointmentDeleted", "Patient"]


def test_add_prints_open_dental_fields_and_defaults_start_to_now(env: dict[str, str]) -> None:
    sub = add(
        env,
        "--customer-key",
        "CK1",
        "--workstation",
        "WS",
        "--note",
        "hello",
        "--secret",
        SECRET,
    )
    assert set(sub) >= ALL_FIELDS
    assert "UiEventType" not in sub  # the CLI's JSON is a contract from before the field
    assert (sub["CustomerKey"], sub["Workstation"], sub["Note"]) == ("CK1", "WS", "hello")
    assert sub["Status"] == "active" and sub["PollingSeconds"] == 5
    assert sub["Secret"] == SECRET  # shown by `add` only
    num = str(sub["SubscriptionNum"])
    assert "whsec" not in str(cli_json(env, "subscriptions", "show", num))
    assert "whsec" not in str(cli_json(env, "subscriptions", "list"))
    generated = add(env)["Secret"]
    assert generated.startswith("whsec_") and len(generated) > 40
    start = datetime.fromisoformat(str(sub["DateTimeStart"]))
    assert abs(start - datetime.now(start.tzinfo)) < timedelta(minutes=1)


def test_list_show_update_pause_resume_remove(env: dict[str, str]) -> None:
    num = str(add(env)["SubscriptionNum"])
    assert cli_json(env, "subscriptions", "show", num)["SubscriptionNum"] == int(num)
    updated = cli_json(
        env,
        "subscriptions",
        "update",
        num,
        "--polling-seconds",
        "9",
        "--date-time-stop",
        "2099-01-01T00:00:00Z",
    )
    assert updated["PollingSeconds"] == 9 and updated["Note"] == ""
    assert updated["DateTimeStop"].startswith("2099-01-01")
    assert cli_json(env, "subscriptions", "pause", num)["Status"] == "paused"
    assert cli_json(env, "subscriptions", "resume", num)["Status"] == "active"
    assert cli_json(env, "subscriptions", "remove", num)["SubscriptionNum"] == int(num)
    gone = cli(env, "subscriptions", "show", num)
    assert (
        gone.returncode == 2 and gone.stderr.strip() == f"apievents: error: no subscription {num}"
    )


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--endpoint-url", "ftp://x/"], "--endpoint-url"),
        (["--endpoint-url", "not a url"], "--endpoint-url"),
        (["--watch-table", "Nope"], "--watch-table"),
        (["--watch-table", "Appointment; DROP TABLE patient"], "--watch-table"),
        (["--polling-seconds", "0"], "--polling-seconds"),
        (["--polling-seconds", "-5"], "--polling-seconds"),
        (["--polling-seconds", "1.5"], "--polling-seconds"),
        (["--date-time-start", "yesterday"], "--date-time-start"),
        (
            [
                "--date-time-stop",
                "2020-01-01T00:00:00Z",
                "--date-time-start",
                "2021-01-01T00:00:00Z",
            ],
            "--date-time-stop",
        ),
        (["--date-time-stop", "soon"], "--date-time-stop"),
        (["--endpoint-url", "http://169.254.169.254/latest/meta-data/"], "--endpoint-url"),
        (["--endpoint-url", "http://[fe80::1]:2097/"], "--endpoint-url"),
        (["--endpoint-url", "http://0.0.0.0:2097/"], "--endpoint-url"),
        (["--endpoint-url", "http://224.0.0.1/"], "--endpoint-url"),
        (["--endpoint-url", "http://[::ffff:169.254.169.254]/"], "--endpoint-url"),
        (["--endpoint-url", "http://does-not-exist.invalid/"], "--endpoint-url"),
        (["--customer-key", "k" * 256], "--customer-key"),
        (["--workstation", "FRONT\r\nX-Injected: 1"], "--workstation"),
        (["--note", "n" * 4001], "--note"),
        (["--secret", "whsec_c2hvcnQ="], "--secret"),
        (["--secret", "not-a-secret"], "--secret"),
        # Hostile customers and hostile inputs (issue 15):
        (["--workstation", "Café"], "--workstation"),
        (["--workstation", "FRONT\u2028DESK"], "--workstation"),
        (["--workstation", "FRONT\u0085DESK"], "--workstation"),
        (["--customer-key", "Clínica Dental"], "--customer-key"),
        (["--date-time-start", "0001-01-01T00:00:00+23:59"], "--date-time-start"),
        (["--date-time-stop", "9999-12-31T23:59:00-05:00"], "--date-time-stop"),
        (["--endpoint-url", "http://168.63.129.16/"], "--endpoint-url"),
        (["--endpoint-url", "http://[64:ff9b::a9fe:a9fe]/"], "--endpoint-url"),
        (["--endpoint-url", "http://[2002:a9fe:a9fe::1]/"], "--endpoint-url"),
        (["--endpoint-url", "http://[::a9fe:a9fe]/"], "--endpoint-url"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    env: dict[str, str], args: list[str], flag: str
) -> None:
    base = {
        "--endpoint-url": "http://localhost:2097/",
        "--watch-table": "Appointment",
        "--polling-seconds": "5",
    }
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    before = count(env)
    done = cli(env, "subscriptions", "add", *[x for kv in base.items() for x in kv])
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"apievents: error: {flag}:")
    assert count(env) == before


@pytest.mark.parametrize(
    "extra_env, url, ok",
    [
        ({}, "http://127.0.0.1:2097/", False),  # private endpoints are refused by default
        ({}, "http://192.168.1.14:2097/", False),
        ({"APIEVENTS_HTTPS_ONLY": "1"}, "https://8.8.8.8/", True),
        ({"APIEVENTS_HTTPS_ONLY": "1"}, "http://8.8.8.8/", False),
        ({"APIEVENTS_DENY_PRIVATE_ENDPOINTS": "1"}, "http://127.0.0.1:2097/", False),
        ({"APIEVENTS_ALLOWED_NETWORKS": "192.168.1.0/24"}, "http://192.168.1.14:2097/", True),
        ({"APIEVENTS_ALLOWED_NETWORKS": "192.168.1.0/24"}, "http://10.0.0.1:2097/", False),
        # =0 keeps the old behaviour: Open Dental's own docs use such endpoints...
        ({"APIEVENTS_DENY_PRIVATE_ENDPOINTS": "0"}, "http://192.168.1.14:2097/", True),
        ({"APIEVENTS_DENY_PRIVATE_ENDPOINTS": "0"}, "http://127.0.0.1:2097/", True),
        # ...but metadata addresses stay refused, however they are written.
        ({"APIEVENTS_DENY_PRIVATE_ENDPOINTS": "0"}, "http://168.63.129.16/", False),
        ({"APIEVENTS_DENY_PRIVATE_ENDPOINTS": "0"}, "http://[fd20:ce::254]/", False),
        ({"APIEVENTS_DENY_PRIVATE_ENDPOINTS": "0"}, "http://[64:ff9b::a9fe:a9fe]/", False),
    ],
)
def test_operator_endpoint_policy(
    env: dict[str, str], extra_env: dict[str, str], url: str, ok: bool
) -> None:
    operator = {k: v for k, v in env.items() if k != "APIEVENTS_ALLOWED_NETWORKS"}  # the defaults
    done = cli(
        operator | extra_env,
        "subscriptions",
        "add",
        "--endpoint-url",
        url,
        "--watch-table",
        "Appointment",
        "--polling-seconds",
        "5",
    )
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert done.returncode == 2 and "--endpoint-url: refused" in done.stderr
    assert count(env) == int(ok)


def test_api_key_customer_keys_are_printable_ascii(env: dict[str, str]) -> None:
    for bad in ("Clínica Dental", "a\u2028b", "a\u0085b"):
        done = cli(env, "api-keys", "create", "--customer-key", bad)
        assert done.returncode == 2 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert lines == [
            "apievents: error: --customer-key: must be printable ASCII only (U+0020 to U+007E)"
        ]
    assert cli_json(env, "api-keys", "list") == []


def test_the_operator_may_exceed_the_per_customer_cap(env: dict[str, str]) -> None:
    capped = env | {"APIEVENTS_MAX_SUBSCRIPTIONS_PER_CUSTOMER": "1"}
    add(capped, "--customer-key", "OFFICE1")
    add(capped, "--customer-key", "OFFICE1")
    assert count(env) == 2


def test_attempts_and_rewind_commands(env: dict[str, str]) -> None:
    num = str(add(env, "--date-time-start", "2026-01-01T00:00:00Z")["SubscriptionNum"])
    assert cli_json(env, "subscriptions", "attempts", num) == []
    rewound = cli_json(env, "subscriptions", "rewind", num, "--to", "2025-06-01T00:00:00Z")
    assert rewound["DateTimeStart"].startswith("2025-06-01")
    later = cli(env, "subscriptions", "rewind", num, "--to", "2027-01-01T00:00:00Z")
    assert later.returncode == 2 and "--to: must not be later" in later.stderr


def test_bad_update_changes_nothing(env: dict[str, str]) -> None:
    sub = add(env)
    num = str(sub["SubscriptionNum"])
    done = cli(env, "subscriptions", "update", num, "--note", "x", "--polling-seconds", "0")
    assert done.returncode == 2
    assert cli_json(env, "subscriptions", "show", num)["Note"] == ""


def test_missing_required_field_and_unknown_setting(env: dict[str, str]) -> None:
    done = cli(env, "subscriptions", "add", "--endpoint-url", "http://localhost/")
    assert done.returncode == 2 and "--watch-table: is required" in done.stderr
    done = cli({**env, "APIEVENTS_BATCH_SIZE": "5000"}, "subscriptions", "list")
    assert done.returncode == 2 and "--batch-size" in done.stderr


def test_watch_tables_add_then_subscribe(env: dict[str, str], database_url: str) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE procedurelog (procnum bigint PRIMARY KEY, procfee numeric, "
            "datetstamp timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "CREATE TRIGGER procedurelog_stamp BEFORE INSERT OR UPDATE ON procedurelog "
            "FOR EACH ROW EXECUTE FUNCTION apievents.stamp_now('datetstamp')"
        )
        conn.execute("CREATE TABLE unstamped (id bigint PRIMARY KEY, at timestamptz)")
    wt = cli_json(
        env,
        "watch-tables",
        "add",
        "--name",
        "Procedure",
        "--table",
        "procedurelog",
        "--key-column",
        "procnum",
        "--timestamp-column",
        "datetstamp",
        "--field",
        "procnum=ProcNum",
        "--field",
        "procfee=ProcFee",
        "--field",
        "datetstamp=DateTStamp",
    )
    assert wt["Fields"] == {"procnum": "ProcNum", "procfee": "ProcFee", "datetstamp": "DateTStamp"}
    assert add(env, "--watch-table", "Procedure")["WatchTable"] == "Procedure"
    for bad in (["--table", "nosuch"], ["--key-column", "nope"], ["--timestamp-column", "procfee"]):
        args = {
            "--name": "X",
            "--table": "procedurelog",
            "--key-column": "procnum",
            "--timestamp-column": "datetstamp",
        } | dict([bad])
        done = cli(env, "watch-tables", "add", *[x for kv in args.items() for x in kv])
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    used = cli(env, "watch-tables", "remove", "Procedure")
    assert used.returncode == 2 and "used by 1" in used.stderr

    plain = [
        "--name",
        "U",
        "--table",
        "unstamped",
        "--key-column",
        "id",
        "--timestamp-column",
        "at",
    ]
    done = cli(env, "watch-tables", "add", *plain)
    assert done.returncode == 2 and "--stamped-by-application" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert cli_json(env, "watch-tables", "add", *plain, "--stamped-by-application")["Table"] == (
        "public.unstamped"
    )


def test_help_explains_every_command(env: dict[str, str]) -> None:
    for args in (["--help"], ["producer", "--help"], ["subscriptions", "add", "--help"]):
        done = cli(env, *args)
        assert done.returncode == 0 and "usage: apievents" in done.stdout
    text = cli(env, "worker", "--help").stdout
    for var in ("APIEVENTS_DATABASE_URL", "APIEVENTS_BROKER_URL", "APIEVENTS_METRICS_PORT"):
        assert var in text


def test_unmigrated_database_is_a_clear_error(empty_env: dict[str, str]) -> None:
    done = cli(empty_env, "subscriptions", "list")
    assert done.returncode == 1
    assert (
        done.stderr == "apievents: error: the database has no apievents schema: run "
        "`apievents migrate`\n"
    )


def test_unreachable_database_is_a_clear_error(env: dict[str, str]) -> None:
    done = cli(
        {**env, "APIEVENTS_DATABASE_URL": "postgresql://127.0.0.1:1/x"}, "subscriptions", "list"
    )
    assert done.returncode == 1
    assert done.stderr.startswith("apievents: error: cannot reach the database")


def test_opendental_schema_is_an_alternative_to_the_sample_schema(
    empty_env: dict[str, str],
) -> None:
    both = cli(empty_env, "migrate", "--sample-schema", "--opendental-schema")
    assert both.returncode == 2 and both.stdout == ""
    assert both.stderr.count("\n") == 1 and "alternatives" in both.stderr
    applied = cli_json(empty_env, "migrate", "--opendental-schema")["applied"]
    assert "opendental.sql" in applied and "WatchTable AppointmentDeleted" in applied
    assert cli_json(empty_env, "migrate", "--opendental-schema")["applied"] == ["opendental.sql"]
    sample = cli(empty_env, "migrate", "--sample-schema")
    assert sample.returncode == 2 and sample.stderr.count("\n") == 1, sample.stderr
    tables = {w["WatchTable"]: w for w in cli_json(empty_env, "watch-tables", "list")}
    assert {w["Format"] for w in tables.values()} == {"opendental"}
    assert tables["Appointment"]["Enums"]["aptstatus"]["1"] == "Scheduled"
    import psycopg

    with psycopg.connect(empty_env["APIEVENTS_DATABASE_URL"], autocommit=True) as conn:
        for table in ("appointment", "patient", "histappointment"):
            conn.execute(f"INSERT INTO {table} DEFAULT VALUES")  # every column has a default


def test_watch_tables_add_with_the_opendental_format(
    env: dict[str, str], database_url: str
) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE procedurelog (procnum bigint PRIMARY KEY, procstatus smallint, "
            "datetstamp timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "CREATE TRIGGER procedurelog_stamp BEFORE INSERT OR UPDATE ON procedurelog "
            "FOR EACH ROW EXECUTE FUNCTION apievents.stamp_now('datetstamp')"
        )
    base = ["watch-tables", "add", "--table", "procedurelog", "--key-column", "procnum"]
    base += ["--timestamp-column", "datetstamp", "--format", "opendental"]
    wt = cli_json(
        env, *base, "--name", "Done", "--enum", "procstatus=1:TP,2:C", "--where", "procstatus=2"
    )
    assert (wt["Format"], wt["Enums"], wt["Where"]) == (
        "opendental",
        {"procstatus": {"1": "TP", "2": "C"}},
        {"procstatus": 2},
    )
    for bad, flag in (
        (["--enum", "procstatus=Nope"], "--enum"),
        (["--where", "nosuch=1"], "--where"),
        (["--where", "procstatus=x"], "--where"),
    ):
        done = cli(env, *base, "--name", "Bad", *bad)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"apievents: error: {flag}:"), done.stderr
    iso = cli(env, *base[:-2], "--name", "Iso", "--enum", "procstatus=YN")
    assert iso.returncode == 2 and "--enum: only with --format opendental" in iso.stderr
