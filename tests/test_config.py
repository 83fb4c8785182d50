"""Configuration: defaults, environment, precedence and validation."""

from __future__ import annotations

import os

import pytest

from spooler.config import DEFAULT_ENDPOINT, Config, parse_size
from spooler.errors import ConfigError


def test_defaults_match_the_seed_and_leave_reporting_off() -> None:
    """Without a key nothing is enabled, and the seed's defaults apply."""
    cfg = Config()
    assert cfg.api_key is None
    assert cfg.enabled is False
    assert cfg.endpoint == DEFAULT_ENDPOINT
    assert cfg.batch_size == 50
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
        ("batch_size", "50"),
        ("flush_interval", 0),
        ("flush_interval", float("nan")),
        ("spool_max_bytes", -5),
        ("spool_max_bytes", 1000),
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


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1048576", 1 << 20),
        ("64MiB", 64 << 20),
        ("64mb", 64 << 20),
        ("2G", 2 << 30),
        ("512k", 512 << 10),
    ],
)
def test_sizes_accept_binary_units(raw: str, expected: int) -> None:
    """Sizes take plain bytes or K/M/G units (binary)."""
    assert parse_size(raw) == expected


def test_configs_are_hashable_even_with_a_schema_mapping() -> None:
    """A config holding a schemas dict can still key a dict or a cache; equal configs hash alike."""
    a = Config(api_key="k", schemas={"order.placed": {"type": "object"}})
    b = Config(api_key="k", schemas={"order.placed": {"type": "object"}})
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
