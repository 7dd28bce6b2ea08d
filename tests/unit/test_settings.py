from __future__ import annotations

import argparse
import dataclasses

import pytest

from apievents.cli import _parser
from apievents.common.settings import (
    COMMANDS,
    Settings,
    SettingsError,
    add_arguments,
    from_namespace,
    settings_for,
)


def test_environment_then_flags() -> None:
    s = Settings.load(
        {"APIEVENTS_BATCH_SIZE": "10", "APIEVENTS_METRICS_PORT": "9100"}, {"batch_size": "20"}
    )
    assert (s.batch_size, s.metrics_port) == (20, 9100)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"APIEVENTS_BATCH_SIZE": "1001"}, "--batch-size: must be 1 to 1000"),
        ({"APIEVENTS_BATCH_SIZE": "ten"}, "not a number"),
        ({"APIEVENTS_LEASE_SECONDS": "0"}, "--lease-seconds: must be positive"),
        ({"APIEVENTS_LOG_LEVEL": "LOUD"}, "--log-level"),
    ],
)
def test_bad_values_name_the_flag(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env)


def test_every_field_has_a_flag_with_help_naming_its_variable() -> None:
    texts = []
    for command in COMMANDS:
        parser = argparse.ArgumentParser()
        add_arguments(parser, command)
        texts.append(parser.format_help())
    text = "".join(texts)
    for name in Settings.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text
        assert f"APIEVENTS_{name.upper()}" in text
    parser = argparse.ArgumentParser()
    add_arguments(parser, "worker")
    ns = parser.parse_args(["--worker-concurrency", "3"])
    assert from_namespace(ns).worker_concurrency == 3


def leaf_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> dict[str, str]:
    """Every leaf command of the CLI by its words, with its --help text."""
    found: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= leaf_commands(sub, (*words, name))
    if not found and words:
        found[" ".join(words)] = parser.format_help()
    return found


def test_every_setting_is_tagged_with_commands_that_exist() -> None:
    """A setting tagged for no command would be in no --help: tag new settings (settings.py)."""
    for f in dataclasses.fields(Settings):
        used_by = f.metadata.get("used_by")
        assert used_by, f"setting {f.name} names no command in used_by"
        assert used_by <= set(COMMANDS), f"{f.name}: unknown {sorted(used_by - set(COMMANDS))}"
    assert set(leaf_commands(_parser())) == set(COMMANDS)


def test_each_help_lists_only_the_settings_its_command_reads() -> None:
    helps = leaf_commands(_parser())
    every = {f.name for f in dataclasses.fields(Settings)}
    for command, text in helps.items():
        listed = {n for n in every if f"APIEVENTS_{n.upper()}" in text}
        assert listed == {f.name for f in settings_for(command)}, command
    assert "APIEVENTS_HTTP_TIMEOUT" not in helps["watch-tables add"]
    assert "APIEVENTS_DATABASE_URL" in helps["watch-tables add"]
    assert "APIEVENTS_HTTP_TIMEOUT" in helps["worker"] and "APIEVENTS_TICK_SECONDS" in helps["run"]


def test_timezone_becomes_the_session_time_zone_of_every_connection() -> None:
    s = Settings(database_url="postgresql://db:5432/x", timezone="America/Chicago")
    assert "options='-c TimeZone=America/Chicago'" in s.database_url
    assert "dbname=x" in s.database_url
    assert dataclasses.replace(s, batch_size=5).database_url == s.database_url  # idempotent
    assert Settings(database_url="postgresql://db/x").database_url == "postgresql://db/x"
    with pytest.raises(SettingsError, match="--timezone: unknown time zone"):
        Settings(timezone="Mars/Olympus")


def test_tenant_settings_have_safe_defaults() -> None:
    s = Settings()
    assert s.deny_private_endpoints is True  # APIEVENTS_DENY_PRIVATE_ENDPOINTS=0 opts out
    assert s.sender_name == "apievents"  # never the host's name
    assert s.dns_timeout_seconds == 5.0
    assert s.max_subscriptions_per_customer == 100
    assert 1 <= s.max_windows_per_customer <= s.worker_concurrency
    assert Settings.load({"APIEVENTS_DENY_PRIVATE_ENDPOINTS": "0"}).deny_private_endpoints is False


@pytest.mark.parametrize(
    "env, message",
    [
        ({"APIEVENTS_MAX_SUBSCRIPTIONS_PER_CUSTOMER": "-1"}, "--max-subscriptions-per-customer"),
        ({"APIEVENTS_MAX_WINDOWS_PER_CUSTOMER": "-1"}, "--max-windows-per-customer"),
        ({"APIEVENTS_DNS_TIMEOUT_SECONDS": "0"}, "--dns-timeout-seconds: must be positive"),
    ],
)
def test_tenant_settings_refuse_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env)
