"""Configuration: defaults, environment, precedence and validation."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spooler
from spooler import config as config_module
from spooler.config import (
    CODE_ONLY_OPTIONS,
    DEFAULT_ENDPOINT,
    ENV_VARS,
    OPTIONS,
    Config,
    env_value,
    options_from_settings,
    parse_size,
)
from spooler.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-process warnings afresh."""
    monkeypatch.setattr(config_module, "_warned", set())


def config_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "spooler.config" and r.levelno == logging.WARNING
    ]


def test_defaults_match_the_seed_and_leave_reporting_off() -> None:
    """Without a key nothing is enabled, and the seed's defaults apply."""
    cfg = Config()
    assert cfg.api_key is None
    assert cfg.enabled is False
    assert cfg.endpoint == DEFAULT_ENDPOINT
    assert cfg.batch_size == 500
    assert cfg.flush_interval == 10.0
    assert cfg.spool_max_bytes == 64 << 20
    assert cfg.environment == "development"


def test_a_key_turns_reporting_on() -> None:
    """enabled defaults to true exactly when api_key is set."""
    assert Config(api_key="k").enabled is True
    assert Config(api_key="k", enabled=False).enabled is False


def test_enabled_without_a_key_is_refused() -> None:
    """Asking for reporting without a key is a configuration error naming `enabled`."""
    with pytest.raises(ConfigError) as info:
        Config(enabled=True)
    assert info.value.option == "enabled"


def test_from_env_reads_every_documented_variable(tmp_path: os.PathLike[str]) -> None:
    """Each EVENT_ENGINE_CLOUD_* variable reaches its option, parsed to the right type."""
    env = {
        "EVENT_ENGINE_CLOUD_KEY": "secret-key",
        "EVENT_ENGINE_CLOUD_ENDPOINT": "http://127.0.0.1:9999/v1/ingest/",
        "EVENT_ENGINE_CLOUD_ENVIRONMENT": "staging",
        "EVENT_ENGINE_CLOUD_APP_NAME": "shop",
        "EVENT_ENGINE_CLOUD_BATCH_SIZE": "200",
        "EVENT_ENGINE_CLOUD_FLUSH_INTERVAL": "2.5",
        "EVENT_ENGINE_CLOUD_SPOOL_PATH": os.path.join(os.fspath(tmp_path), "s.db"),
        "EVENT_ENGINE_CLOUD_SPOOL_MAX_BYTES": "8MiB",
        "EVENT_ENGINE_CLOUD_SPOOL_MODE": "immediate",
        "EVENT_ENGINE_CLOUD_SHIP_IN_PROCESS": "false",
        "EVENT_ENGINE_CLOUD_SEND_ERROR_MESSAGE": "yes",
    }
    cfg = Config.from_env(env)
    assert cfg.api_key == "secret-key"
    assert cfg.enabled is True
    assert cfg.endpoint == "http://127.0.0.1:9999/v1/ingest"
    assert (cfg.environment, cfg.app_name) == ("staging", "shop")
    assert (cfg.batch_size, cfg.flush_interval) == (200, 2.5)
    assert cfg.spool_path == os.path.join(os.fspath(tmp_path), "s.db")
    assert cfg.spool_max_bytes == 8 << 20
    assert cfg.spool_mode == "immediate"
    assert cfg.ship_in_process is False
    assert cfg.send_error_message is True


def test_explicit_arguments_win_over_the_environment() -> None:
    """An override passed to from_env beats the variable."""
    cfg = Config.from_env({"EVENT_ENGINE_CLOUD_BATCH_SIZE": "7"}, batch_size=9)
    assert cfg.batch_size == 9


def test_environment_falls_back_to_common_variables() -> None:
    """APP_ENV and friends name the environment when ours is unset."""
    assert Config.from_env({"APP_ENV": "production"}).environment == "production"
    assert Config.from_env({}).environment == "development"


def test_app_name_defaults_to_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    """The project folder names the app, the same for every worker and the ship command."""
    folder = os.path.join(os.fspath(tmp_path), "myshop")
    os.mkdir(folder)
    monkeypatch.chdir(folder)
    cfg = Config()
    assert cfg.app_name == "myshop"
    assert cfg.spool_path == os.path.join(folder, ".spooler", "spool.db")


def test_an_empty_key_variable_means_no_key() -> None:
    """EVENT_ENGINE_CLOUD_KEY= (empty) leaves reporting off instead of sending a blank key."""
    cfg = Config.from_env({"EVENT_ENGINE_CLOUD_KEY": ""})
    assert cfg.api_key is None and cfg.enabled is False


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("batch_size", 0),
        ("batch_size", -1),
        ("batch_size", True),
        ("batch_size", "fifty"),
        ("batch_size", 2.5),
        ("batch_size", None),
        ("enabled", "maybe"),
        ("enabled", 2),
        ("flush_interval", 0),
        ("flush_interval", float("nan")),
        ("spool_max_bytes", -5),
        ("spool_max_bytes", 1000),
        ("spool_max_bytes", "512k"),
        ("spool_max_bytes", "2TiB"),
        ("spool_max_bytes", "64 MiBs"),
        ("endpoint", "ftp://example.com/ingest"),
        ("endpoint", "http://example.com/ingest"),
        ("endpoint", "http://10.0.0.5/ingest"),
        ("endpoint", "https://user:pw@example.com/ingest"),
        ("endpoint", "not a url"),
        ("spool_mode", "sometimes"),
        ("shutdown_timeout", -1),
        ("buffer_size", 0),
        ("api_key", "two words"),
        ("environment", ""),
        ("dashboard_origins", ("*",)),
        ("dashboard_origins", ("https://app.example.com/path",)),
        ("schemas", "/definitely/not/a/folder"),
    ],
)
def test_invalid_values_raise_one_clear_error_naming_the_option(option: str, value: object) -> None:
    """Each invalid value is refused at configure time with a ConfigError for that option."""
    with pytest.raises(ConfigError) as info:
        Config(**{option: value})
    assert info.value.option == option
    assert str(info.value).startswith(option + ":")


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("EVENT_ENGINE_CLOUD_BATCH_SIZE", "fifty"),
        ("EVENT_ENGINE_CLOUD_ENABLED", "maybe"),
        ("EVENT_ENGINE_CLOUD_SPOOL_MAX_BYTES", "lots"),
        ("EVENT_ENGINE_CLOUD_FLUSH_INTERVAL", "soon"),
    ],
)
def test_unparseable_environment_values_name_the_option(var: str, raw: str) -> None:
    """A bad environment value raises ConfigError, not a bare ValueError from int()."""
    with pytest.raises(ConfigError):
        Config.from_env({"EVENT_ENGINE_CLOUD_KEY": "k", var: raw})


def test_unknown_option_is_refused() -> None:
    """A misspelt option raises instead of being silently ignored."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({}, batchsize=5)
    assert info.value.option == "batchsize"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/v1", "http://localhost/x", "http://[::1]:9/"]
)
def test_plain_http_is_allowed_for_loopback(url: str) -> None:
    """Local receivers on loopback may use http."""
    assert Config(endpoint=url).endpoint.startswith("http://")


def test_repr_never_shows_the_key() -> None:
    """repr(config) masks the key, so logging a config cannot leak it."""
    cfg = Config(api_key="super-secret-value")
    assert "super-secret-value" not in repr(cfg)
    assert "super-secret-value" not in str(cfg)
    assert "********" in repr(cfg)


def test_replace_validates_again() -> None:
    """A copy made with replace() is checked like a new config."""
    with pytest.raises(ConfigError):
        Config().replace(batch_size=0)


def test_configs_are_hashable_even_with_a_schema_mapping() -> None:
    """A config holding a schemas dict can still key a dict or a cache; equal configs hash alike."""
    a = Config(api_key="k", schemas={"order.placed": {"type": "object"}})
    b = Config(api_key="k", schemas={"order.placed": {"type": "object"}})
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1


# -- one parser for every source -----------------------------------------------------

# (option, what a person writes, what it means): each written form is accepted alike as a
# keyword argument, an environment variable, a Flask key and a Django SPOOLER entry.
SAME_EVERYWHERE = [
    ("batch_size", "100", 100),
    ("batch_size", " 100 ", 100),
    ("batch_size", 100, 100),
    ("buffer_size", "2000", 2000),
    ("error_message_max_length", "0", 0),
    ("flush_interval", "2.5", 2.5),
    ("flush_interval", "3", 3.0),
    ("flush_interval", 3, 3.0),
    ("shutdown_timeout", "0", 0.0),
    ("spool_max_bytes", "64MiB", 64 << 20),
    ("spool_max_bytes", "64MB", 64_000_000),
    ("spool_max_bytes", "2g", 2_000_000_000),
    ("spool_max_bytes", "67108864", 64 << 20),
    ("spool_max_bytes", 1 << 20, 1 << 20),
    ("ship_in_process", "false", False),
    ("ship_in_process", "0", False),
    ("ship_in_process", "Off", False),
    ("ship_in_process", 0, False),
    ("send_error_message", "true", True),
    ("send_error_message", "1", True),
    ("send_error_message", "YES", True),
    ("send_error_message", "on", True),
    ("send_error_message", 1, True),
    ("payload_endpoint", True, True),
    ("compress", "yes", True),
    ("compress", "false", False),
    ("debug", "On", True),
    ("metrics_port", "9100", 9100),
    ("metrics_port", 0, 0),
    ("proxy", " http://127.0.0.1:3128 ", "http://127.0.0.1:3128"),
    ("spool_mode", "Immediate", "immediate"),
    (
        "dashboard_origins",
        "https://a.example, https://b.example",
        (
            "https://a.example",
            "https://b.example",
        ),
    ),
]


@pytest.fixture
def no_reporter() -> Iterator[None]:
    yield
    spooler.shutdown(timeout=0.5)


@pytest.mark.parametrize(("option", "written", "meant"), SAME_EVERYWHERE)
def test_every_source_reads_the_same_forms_alike(
    option: str, written: object, meant: object, no_reporter: None
) -> None:
    """Config(...), configure(...), the environment, Flask keys and Django's dict agree."""
    env_form = written if isinstance(written, str) else str(written)
    flask = options_from_settings(
        {"SPOOLER_" + option.upper(): written}, prefix="SPOOLER_", where="the Flask config"
    )
    django = options_from_settings({option: written}, where="settings.SPOOLER")
    built = [
        Config(**{option: written}),
        Config.from_env({}, **{option: written}),
        Config.from_env({ENV_VARS[option]: env_form}),
        Config.from_env({}, **flask),
        Config.from_env({}, **django),
        spooler.configure(**{option: written}).config,
    ]
    assert [getattr(c, option) for c in built] == [meant] * len(built)
    assert all(type(getattr(c, option)) is type(meant) for c in built)


@pytest.mark.parametrize(
    ("option", "written"),
    [
        ("batch_size", "fifty"),
        ("batch_size", "0"),
        ("flush_interval", "soon"),
        ("flush_interval", "nan"),
        ("enabled", "maybe"),
        ("spool_max_bytes", "512k"),
        ("spool_max_bytes", "lots"),
        ("spool_mode", "sometimes"),
        ("compress", "maybe"),
        ("debug", "2"),
        ("metrics_port", "70000"),
        ("metrics_port", "http"),
    ],
)
def test_every_source_refuses_the_same_forms_naming_the_option(
    option: str, written: str, no_reporter: None
) -> None:
    """A bad value raises ConfigError for the option from every source, the same message."""
    attempts = [
        lambda: Config(**{option: written}),
        lambda: spooler.configure(**{option: written}),
        lambda: Config.from_env({ENV_VARS[option]: written}),
    ]
    messages = []
    for attempt in attempts:
        with pytest.raises(ConfigError) as info:
            attempt()
        assert info.value.option == option
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    # The environment's error also names the variable that was set.
    assert messages[2] == f"{messages[0]} (from {ENV_VARS[option]})"


def test_a_bad_value_for_an_option_the_arguments_override_is_never_read() -> None:
    """An argument replaces its variable entirely, so a broken variable under it is harmless."""
    cfg = Config.from_env({"EVENT_ENGINE_CLOUD_BATCH_SIZE": "fifty"}, batch_size="7")
    assert cfg.batch_size == 7


def test_replace_and_equality_see_parsed_values() -> None:
    """Configs built from strings equal configs built from values, and survive replace()."""
    a = Config(batch_size="100", spool_max_bytes="64MiB", enabled="0")
    b = Config(batch_size=100, spool_max_bytes=64 << 20, enabled=False)
    assert a == b and a.replace() == b
    assert a.replace(flush_interval="5").flush_interval == 5.0


# -- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1048576", 1 << 20),
        ("1048576B", 1 << 20),
        ("64MiB", 64 << 20),
        ("64mib", 64 << 20),
        ("64 MiB", 64 << 20),
        ("64MB", 64_000_000),
        ("64mb", 64_000_000),
        ("64M", 64_000_000),
        ("512k", 512_000),
        ("512 kB", 512_000),
        ("512KiB", 512 << 10),
        ("2G", 2_000_000_000),
        ("2GiB", 2 << 30),
        ("1.5GiB", 3 << 29),
        ("1T", 10**12),
        ("1TiB", 1 << 40),
    ],
)
def test_sizes_follow_pydantics_convention(raw: str, expected: int) -> None:
    """KiB/MiB/GiB are powers of 1024; kB/MB/GB and bare k/m/g powers of 1000; any case."""
    assert parse_size(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "1048576",
        "1048576b",
        "64MiB",
        "64mb",
        "64 M",
        "512k",
        "512 KB",
        "512kib",
        "2G",
        "2gib",
        "1.5GiB",
        "0.5 mb",
        "3TB",
        "1tib",
    ],
)
def test_sizes_agree_with_pydantic_bytesize(raw: str) -> None:
    """The convention is pydantic's ByteSize, checked against pydantic itself."""
    pydantic = pytest.importorskip("pydantic")
    assert parse_size(raw) == pydantic.TypeAdapter(pydantic.ByteSize).validate_python(raw)


def test_a_size_below_the_minimum_is_explained_in_the_users_units() -> None:
    """512k is refused with the limit in MiB and bytes, and what was given, as given."""
    with pytest.raises(ConfigError) as info:
        Config(spool_max_bytes="512k")
    assert info.value.option == "spool_max_bytes"
    assert str(info.value) == (
        "spool_max_bytes: must be at least 1 MiB (1048576 bytes), got '512k' (512000 bytes)"
    )
    with pytest.raises(ConfigError) as info:
        Config(spool_max_bytes=1000)
    assert str(info.value).endswith("got 1000 bytes")
    with pytest.raises(ConfigError) as info:
        Config.from_env({"EVENT_ENGINE_CLOUD_SPOOL_MAX_BYTES": "2TiB"})
    assert "at most 1 TiB (1099511627776 bytes), got '2TiB'" in str(info.value)


def test_an_unreadable_size_says_what_sizes_look_like() -> None:
    """A size in no known unit names both unit families in the error."""
    with pytest.raises(ConfigError) as info:
        parse_size("64 MiBs")
    assert "64MiB" in str(info.value) and "500MB" in str(info.value)
    assert "'64 MiBs'" in str(info.value)


# -- unknown names -------------------------------------------------------------------


def test_a_misspelt_variable_is_warned_about_once_naming_the_closest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EVENT_ENGINE_CLOUD_BATCHSIZE logs one WARNING pointing at ..._BATCH_SIZE; its value never."""
    env = {"EVENT_ENGINE_CLOUD_BATCHSIZE": "500", "EVENT_ENGINE_CLOUD_API_KEY": "sk_live_x9"}
    with caplog.at_level(logging.WARNING, logger="spooler.config"):
        Config.from_env(env)
        Config.from_env(env)
    assert sorted(config_warnings(caplog)) == [
        "EVENT_ENGINE_CLOUD_API_KEY in the environment is not a spooler option and is ignored;"
        " did you mean EVENT_ENGINE_CLOUD_KEY?",
        "EVENT_ENGINE_CLOUD_BATCHSIZE in the environment is not a spooler option and is "
        "ignored; did you mean EVENT_ENGINE_CLOUD_BATCH_SIZE?",
    ]
    assert "sk_live_x9" not in caplog.text
    assert Config.from_env(env).api_key is None


def test_an_unknown_variable_with_no_near_option_is_still_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A variable resembling nothing is warned about without a guess."""
    with caplog.at_level(logging.WARNING, logger="spooler.config"):
        Config.from_env({"EVENT_ENGINE_CLOUD_ZZZ": "1"})
    [message] = config_warnings(caplog)
    assert message.startswith("EVENT_ENGINE_CLOUD_ZZZ in the environment is not a spooler")
    assert "did you mean" not in message


def test_the_documented_variables_are_never_warned_about(
    caplog: pytest.LogCaptureFixture, tmp_path: os.PathLike[str]
) -> None:
    """Every variable in ENV_VARS (the README's table), and APP_ENV and friends, is silent."""
    env = {var: "" for var in ENV_VARS.values()}
    env.update(
        EVENT_ENGINE_CLOUD_ENDPOINT=DEFAULT_ENDPOINT,
        EVENT_ENGINE_CLOUD_ENVIRONMENT="prod",
        EVENT_ENGINE_CLOUD_APP_NAME="shop",
        EVENT_ENGINE_CLOUD_BATCH_SIZE="10",
        EVENT_ENGINE_CLOUD_FLUSH_INTERVAL="1",
        EVENT_ENGINE_CLOUD_SPOOL_PATH=os.path.join(os.fspath(tmp_path), "s.db"),
        EVENT_ENGINE_CLOUD_SPOOL_MAX_BYTES="8MiB",
        EVENT_ENGINE_CLOUD_SPOOL_MODE="background",
        EVENT_ENGINE_CLOUD_SHUTDOWN_TIMEOUT="1",
        EVENT_ENGINE_CLOUD_BUFFER_SIZE="10",
        EVENT_ENGINE_CLOUD_ERROR_MESSAGE_MAX_LENGTH="10",
        EVENT_ENGINE_CLOUD_SCHEMAS=os.fspath(tmp_path),
        EVENT_ENGINE_CLOUD_DASHBOARD_ORIGINS="https://app.example",
        APP_ENV="x",
        DJANGO_ENV="x",
        FLASK_ENV="x",
        ENVIRONMENT="x",
    )
    assert set(ENV_VARS) == set(OPTIONS) - CODE_ONLY_OPTIONS
    with caplog.at_level(logging.DEBUG, logger="spooler.config"):
        Config.from_env(env)
    assert config_warnings(caplog) == []


def test_a_misspelt_framework_key_is_warned_about_once_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flask's SPOOLER_BATCHSIZE and Django's {'flush_intreval': ...} each log one WARNING."""
    flask_config = {"SPOOLER_BATCHSIZE": "100", "SPOOLER_API_KEY": "k", "SECRET_KEY": "x"}
    django_dict = {"flush_intreval": 5, "API_KEY": "k2", "batch_size": 3}
    with caplog.at_level(logging.WARNING, logger="spooler.config"):
        for _ in range(2):
            flask = options_from_settings(flask_config, prefix="SPOOLER_", where="the Flask config")
            django = options_from_settings(django_dict, where="settings.SPOOLER")
    assert flask == {"api_key": "k"}
    assert django == {"batch_size": 3}
    assert sorted(config_warnings(caplog)) == [
        "'API_KEY' in settings.SPOOLER is not a spooler option and is ignored; did you mean "
        "'api_key'?",
        "'flush_intreval' in settings.SPOOLER is not a spooler option and is ignored; did you "
        "mean 'flush_interval'?",
        "SPOOLER_BATCHSIZE in the Flask config is not a spooler option and is ignored; did you "
        "mean SPOOLER_BATCH_SIZE?",
    ]


def test_an_unknown_argument_raises_and_suggests_the_closest(no_reporter: None) -> None:
    """configure(batchsize=5) is a programming error: it raises, naming batch_size."""
    with pytest.raises(ConfigError) as info:
        spooler.configure(batchsize=5)
    assert info.value.option == "batchsize"
    assert str(info.value) == "batchsize: is not a spooler option; did you mean 'batch_size'?"


# -- app_name ------------------------------------------------------------------------


def test_a_framework_default_sits_between_the_directory_and_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    """defaults= beats the folder's name; EVENT_ENGINE_CLOUD_APP_NAME and arguments beat it."""
    folder = os.path.join(os.fspath(tmp_path), "app")
    os.mkdir(folder)
    monkeypatch.chdir(folder)
    shop: dict[str, Any] = {"app_name": "shop"}
    assert Config.from_env({}).app_name == "app"
    assert Config.from_env({}, defaults=shop).app_name == "shop"
    env = {"EVENT_ENGINE_CLOUD_APP_NAME": "billing"}
    assert Config.from_env(env, defaults=shop).app_name == "billing"
    assert Config.from_env(env, defaults=shop, app_name="api").app_name == "api"
    with pytest.raises(ConfigError):
        Config.from_env({}, defaults={"app_nme": "x"})


# -- proxy, ca_bundle, metrics_port, debug, before_send -------------------------------


def test_new_options_default_to_off() -> None:
    """No proxy or CA bundle of spooler's own (httpx's environment rules apply), no gzip,
    no metrics server, no debug, no before_send."""
    cfg = Config()
    assert (cfg.proxy, cfg.ca_bundle, cfg.compress, cfg.metrics_port, cfg.debug) == (
        None,
        None,
        False,
        None,
        False,
    )
    assert cfg.before_send is None


def test_empty_variables_mean_unset() -> None:
    """An exported-but-empty variable leaves the option at its default."""
    cfg = Config.from_env(
        {
            "EVENT_ENGINE_CLOUD_PROXY": "",
            "EVENT_ENGINE_CLOUD_CA_BUNDLE": " ",
            "EVENT_ENGINE_CLOUD_METRICS_PORT": "",
        }
    )
    assert (cfg.proxy, cfg.ca_bundle, cfg.metrics_port) == (None, None, None)


@pytest.mark.parametrize(
    "proxy",
    [
        "socks5://127.0.0.1:1080",
        "127.0.0.1:3128",
        "http://",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:3128/some/path",
        "http://127.0.0.1:3128?x=1",
        42,
    ],
)
def test_a_proxy_must_be_an_http_url(proxy: object) -> None:
    """The proxy is checked at configure time: http(s) scheme, a host, nothing after the port."""
    with pytest.raises(ConfigError) as info:
        Config(proxy=proxy)
    assert info.value.option == "proxy"


def test_proxy_credentials_never_show_in_repr_or_errors() -> None:
    """A proxy password is accepted and kept, but repr(config) and ConfigError never show it."""
    cfg = Config.from_env({"EVENT_ENGINE_CLOUD_PROXY": "http://me:hunter2@127.0.0.1:3128"})
    assert cfg.proxy == "http://me:hunter2@127.0.0.1:3128"
    assert "hunter2" not in repr(cfg) and "me:" not in repr(cfg)
    assert "proxy='http://***@127.0.0.1:3128'" in repr(cfg)
    for bad in ("ftp://me:hunter2@host", "http://me:hunter2@host:bad", "http://me:hunter2@h/p"):
        with pytest.raises(ConfigError) as info:
            Config(proxy=bad)
        assert "hunter2" not in str(info.value), bad


def test_ca_bundle_must_be_an_existing_readable_file(tmp_path: Path) -> None:
    """A missing file or a folder is refused up front, naming the option; a file is kept."""
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Config.from_env({"EVENT_ENGINE_CLOUD_CA_BUNDLE": str(pem)}).ca_bundle == str(pem)
    for bad in (tmp_path / "missing.pem", tmp_path, 3.5):
        with pytest.raises(ConfigError) as info:
            Config(ca_bundle=bad)
        assert info.value.option == "ca_bundle"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_ca_bundle_is_refused(tmp_path: Path) -> None:
    """A CA bundle the process cannot read fails at configure time, not at the first handshake."""
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    pem.chmod(0)
    with pytest.raises(ConfigError, match="not readable"):
        Config(ca_bundle=pem)


def test_before_send_must_be_callable_and_cannot_come_from_the_environment() -> None:
    """before_send takes a function or None; a string is refused, and no variable sets it."""

    def scrub(entry: dict[str, Any]) -> dict[str, Any] | None:
        return entry

    assert Config(before_send=scrub).before_send is scrub
    with pytest.raises(ConfigError) as info:
        Config(before_send="mymodule.scrub")
    assert info.value.option == "before_send"
    assert "before_send" not in ENV_VARS and "before_send" in CODE_ONLY_OPTIONS


def test_before_send_is_left_out_of_equality_hash_and_repr() -> None:
    """Two configs differing only in before_send are equal, hash alike and repr alike."""
    a = Config(before_send=lambda entry: entry, debug=True)
    b = Config(debug=True)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert repr(a) == repr(b) and "before_send" not in repr(a)


def test_env_value_reads_one_variable_as_config_would_and_no_other() -> None:
    """`spooler receive` expects the key `ship` sends: both strip it; a bad variable
    elsewhere in the environment does not stop the one read."""
    env = {ENV_VARS["api_key"]: "  k-1  ", ENV_VARS["batch_size"]: "fifty"}
    assert (
        env_value("api_key", env)
        == Config.from_env({ENV_VARS["api_key"]: "  k-1  "}).api_key
        == "k-1"
    )
    assert env_value("api_key", {ENV_VARS["api_key"]: "   "}) is None
    assert env_value("api_key", {}) is None
    with pytest.raises(ConfigError):
        env_value("batch_size", env)
