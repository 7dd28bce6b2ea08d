from __future__ import annotations

import argparse

import pytest

from apievents.common.settings import Settings, SettingsError, add_arguments, from_namespace


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
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for name in Settings.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text
        assert f"APIEVENTS_{name.upper()}" in text
    ns = parser.parse_args(["--worker-concurrency", "3"])
    assert from_namespace(ns).worker_concurrency == 3


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
