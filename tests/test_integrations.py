"""Framework integrations: real Django, Flask and FastAPI apps report to a real local receiver."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from flask import Flask

import spooler
from examples.outbox_app import CUSTOMERS, OutboxApp
from spooler import config as config_module
from spooler.config import Config
from spooler.integrations import start_once
from spooler.integrations.fastapi import mount_payload_endpoint as mount_asgi
from spooler.integrations.fastapi import spooler_lifespan
from spooler.integrations.flask import Spooler, options_from_config
from spooler.integrations.flask import mount_payload_endpoint as mount_wsgi
from spooler.receiver import Receiver
from tests.conftest import wait_for

KEY = "integration-key-5b1e"
EMAIL, ADDRESS = CUSTOMERS[1]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_reporter() -> Iterator[None]:
    yield
    spooler.shutdown(timeout=0.5)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(api_key=KEY, db_path=tmp_path / "receiver.db") as r:
        yield r


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[OutboxApp]:
    with OutboxApp(str(tmp_path / "outbox.db")) as app:
        yield app


def options(receiver: Receiver, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": KEY,
        "endpoint": receiver.url,
        "spool_path": str(tmp_path / "spool" / "spool.db"),
        "flush_interval": 0.2,
        "payload_endpoint": True,
        **extra,
    }


def arrived(receiver: Receiver, event_id: int, status: str = "emitted") -> bool:
    return any(e["event_id"] == event_id and e["status"] == status for e in receiver.entries())


def stored_text(receiver: Receiver) -> str:
    return json.dumps([receiver.entries(), receiver.heartbeats()])


# -- shared ------------------------------------------------------------------------


def test_start_once_keeps_the_running_reporter_for_the_same_options(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Booting a second app with the same options reuses the reporter; other options replace it."""
    first = start_once(**options(receiver, tmp_path))
    assert first.active and start_once(**options(receiver, tmp_path)) is first
    second = start_once(**options(receiver, tmp_path, batch_size=7))
    assert second is not first and not first.active and second.config.batch_size == 7


# -- Flask -------------------------------------------------------------------------


def flask_app(shop: OutboxApp, config: dict[str, Any]) -> Flask:
    app = Flask("shop")
    app.config.update(config)

    @app.post("/orders")
    def create_order() -> dict[str, int]:
        return {"order_id": shop.place_order(EMAIL, 2599, address=ADDRESS)}

    return app


def test_flask_config_keys_map_to_every_option() -> None:
    """Each Config field is read from SPOOLER_<FIELD>; unrelated keys are ignored."""
    names = [f.name for f in dataclasses.fields(Config)]
    config = {"SPOOLER_" + name.upper(): name for name in names}
    config["SECRET_KEY"] = "not ours"
    assert options_from_config(config) == {name: name for name in names}


def test_flask_extension_reports_events_and_serves_payloads(
    receiver: Receiver, shop: OutboxApp, tmp_path: Path
) -> None:
    """A Flask request writing an order gets its event to the receiver; the mount checks keys."""
    config = {"SPOOLER_" + k.upper(): v for k, v in options(receiver, tmp_path).items()}
    app = flask_app(shop, config)
    extension = Spooler(app)
    mount_wsgi(app, shop.lookup)
    assert app.extensions["spooler"] is extension
    assert extension.reporter is spooler.get_reporter()
    client = app.test_client()
    assert client.post("/orders").get_json() == {"order_id": 1}
    assert wait_for(lambda: arrived(receiver, 1))
    assert client.get("/eventengine/events/1").status_code == 401
    answer = client.get("/eventengine/events/1", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200
    assert answer.get_json()["payload"]["customer_email"] == EMAIL
    assert (
        client.get("/eventengine/events/99", headers={"Authorization": f"Bearer {KEY}"}).status_code
        == 404
    )
    assert EMAIL not in stored_text(receiver) and ADDRESS not in stored_text(receiver)
    # A second app in the same process (an app factory called again) shares the reporter.
    again = Spooler()
    again.init_app(flask_app(shop, config))
    assert again.reporter is extension.reporter


def test_flask_payload_mount_answers_404_while_the_option_is_off(
    receiver: Receiver, shop: OutboxApp, tmp_path: Path
) -> None:
    """Mounted but not switched on, the endpoint does not exist, even with the right key."""
    settings = options(receiver, tmp_path, payload_endpoint=False)
    app = flask_app(shop, {"SPOOLER_" + k.upper(): v for k, v in settings.items()})
    Spooler(app)
    mount_wsgi(app, shop.lookup, url_prefix="/ee/")
    shop.place_order(EMAIL, 100)
    answer = app.test_client().get("/ee/events/1", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404 and EMAIL not in answer.get_data(as_text=True)


# -- FastAPI -----------------------------------------------------------------------


def test_fastapi_lifespan_starts_reports_and_shuts_down(
    receiver: Receiver, shop: OutboxApp, tmp_path: Path
) -> None:
    """Startup starts the reporter, an endpoint's event arrives, shutdown stops it; keys checked."""
    app = FastAPI(lifespan=spooler_lifespan(**options(receiver, tmp_path)))
    mount_asgi(app, shop.lookup)

    @app.post("/orders")
    def create_order() -> dict[str, int]:
        return {"order_id": shop.place_order(EMAIL, 1250)}

    before = spooler.get_reporter()  # another test's, shut down, or None
    assert before is None or not before.active  # nothing runs before startup
    with serve(app) as base_url, httpx.Client(base_url=base_url) as client:
        running = spooler.get_reporter()
        assert running is not None and running is not before and running.active
        assert client.post("/orders").json() == {"order_id": 1}
        assert wait_for(lambda: arrived(receiver, 1))
        assert client.get("/eventengine/events/1").status_code == 401
        answer = client.get("/eventengine/events/1", headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200 and answer.json()["payload"]["amount_cents"] == 1250
    assert not running.active
    assert EMAIL not in stored_text(receiver)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1:0 in a thread, lifespan included; yield its URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="test.uvicorn", daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started or not thread.is_alive())
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# -- Django ------------------------------------------------------------------------

DJANGO_SCRIPT = textwrap.dedent(
    """
    import json, sys

    import django
    from django.conf import settings

    from examples.outbox_app import OutboxApp

    url, key, spool_path, outbox_path = sys.argv[1:5]
    shop = OutboxApp(outbox_path)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-insecure-test-only-" + "x" * 40,
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["spooler.integrations.django"],
        MIDDLEWARE=[
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        SPOOLER={
            "api_key": key,
            "endpoint": url,
            "spool_path": spool_path,
            "flush_interval": 0.2,
            "payload_endpoint": True,
        },
    )
    django.setup()

    import spooler
    from django.apps import apps
    from django.test import Client
    from spooler.integrations.django import payload_urlpatterns

    urlpatterns = payload_urlpatterns(shop.lookup)
    first = spooler.get_reporter()
    apps.get_app_config("spooler").ready()  # ready() may run twice; one reporter
    order_id = shop.place_order("grace.hopper@example.org", 990)
    client = Client()
    auth = {"HTTP_AUTHORIZATION": "Bearer " + key}
    found = client.get("/eventengine/events/1", **auth)
    print(json.dumps({
        "active": first is not None and first.active,
        "same_reporter": spooler.get_reporter() is first,
        "app_label": apps.get_app_config("spooler").name,
        "no_key": client.get("/eventengine/events/1").status_code,
        "found": found.status_code,
        "payload": json.loads(found.content)["payload"],
        "missing": client.get("/eventengine/events/7", **auth).status_code,
        "post": client.post("/eventengine/events/1", **auth).status_code,
    }))
    # No explicit shutdown: the atexit hook flushes the spool on the way out.
    """
)


@pytest.mark.slow
def test_django_app_starts_in_ready_and_serves_payloads(receiver: Receiver, tmp_path: Path) -> None:
    """INSTALLED_APPS + settings.SPOOLER start reporting; the event arrives; the URLs check keys."""
    script = tmp_path / "django_site.py"
    script.write_text(DJANGO_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENT_ENGINE_", "DJANGO_"))}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            receiver.url,
            KEY,
            str(tmp_path / "spool" / "spool.db"),
            str(tmp_path / "outbox.db"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {
        "active": True,
        "same_reporter": True,
        "app_label": "spooler.integrations.django",
        "no_key": 401,
        "found": 200,
        "payload": {
            "order_id": 1,
            "customer_email": EMAIL,
            "amount_cents": 990,
            "currency": "EUR",
            "shipping_address": "",
        },
        "missing": 404,
        "post": 405,
    }
    assert wait_for(lambda: arrived(receiver, 1))
    assert EMAIL not in stored_text(receiver)


# -- options the framework's way: strings, unknown keys, the app's name ---------------


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No EVENT_ENGINE_CLOUD_* variable, fresh once-only warnings, cwd a folder named 'srv'."""
    for var in list(os.environ):
        if var.upper().startswith("EVENT_ENGINE_CLOUD_"):
            monkeypatch.delenv(var)
    monkeypatch.setattr(config_module, "_warned", set())
    folder = tmp_path / "srv"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def config_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spooler.config"]


def test_flask_reads_strings_and_warns_once_about_a_misspelt_key(
    receiver: Receiver, tmp_path: Path, plain_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SPOOLER_BATCH_SIZE = "100" works like 100; SPOOLER_FLUSH_INTERVL is named, once."""
    config = {"SPOOLER_" + k.upper(): v for k, v in options(receiver, tmp_path).items()}
    config.update(
        SPOOLER_BATCH_SIZE="100",
        SPOOLER_SPOOL_MAX_BYTES="8MiB",
        SPOOLER_SEND_ERROR_MESSAGE="true",
        SPOOLER_PAYLOAD_ENDPOINT="0",
        SPOOLER_FLUSH_INTERVL="1",
    )
    with caplog.at_level(logging.WARNING, logger="spooler.config"):
        app = Flask("shop")
        app.config.update(config)
        extension = Spooler(app)
        Spooler().init_app(app)  # an app factory called again
    assert extension.reporter is not None
    cfg = extension.reporter.config
    assert (cfg.batch_size, cfg.spool_max_bytes) == (100, 8 << 20)
    assert (cfg.send_error_message, cfg.payload_endpoint) == (True, False)
    assert config_warnings(caplog) == [
        "SPOOLER_FLUSH_INTERVL in the Flask config is not a spooler option and is ignored; "
        "did you mean SPOOLER_FLUSH_INTERVAL?"
    ]


def test_flask_names_the_app_after_its_import_name(
    plain_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flask("shop.web") reports 'shop'; the variable and SPOOLER_APP_NAME win over it."""

    def app_name(import_name: str, **config: str) -> str:
        app = Flask(import_name)
        app.config.update(config)
        reporter = Spooler(app).reporter
        assert reporter is not None
        return reporter.config.app_name

    assert app_name("shop.web") == "shop"
    assert app_name("shop") == "shop"
    assert app_name("__main__") == plain_env.name == "srv"
    monkeypatch.setenv("EVENT_ENGINE_CLOUD_APP_NAME", "billing")
    assert app_name("shop.web") == "billing"
    assert app_name("shop.web", SPOOLER_APP_NAME="orders") == "orders"


def test_fastapi_names_the_app_after_its_title(
    plain_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI(title="Orders API") reports it; the default title and Starlette use the folder."""
    from starlette.applications import Starlette

    async def app_name(app: Any, **options: Any) -> str:
        async with spooler_lifespan(**options)(app):
            running = spooler.get_reporter()
            assert running is not None
            return running.config.app_name

    assert asyncio.run(app_name(FastAPI(title="Orders API"))) == "Orders API"
    assert asyncio.run(app_name(FastAPI())) == "srv"
    assert asyncio.run(app_name(Starlette())) == "srv"
    assert asyncio.run(app_name(FastAPI(title="Orders API"), app_name="orders")) == "orders"
    monkeypatch.setenv("EVENT_ENGINE_CLOUD_APP_NAME", "billing")
    assert asyncio.run(app_name(FastAPI(title="Orders API"))) == "billing"


DJANGO_PROBE = textwrap.dedent(
    """
    import json, logging, sys

    import django
    from django.conf import settings

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    if sys.argv[1] != "-":
        settings.configure(
            ROOT_URLCONF=sys.argv[1],
            INSTALLED_APPS=["spooler.integrations.django"],
            SPOOLER={"enabled": "false"},
        )
    django.setup()

    import spooler
    from django.apps import apps

    apps.get_app_config("spooler").ready()  # ready() may run twice; one warning
    c = spooler.get_reporter().config
    print(json.dumps({
        "app_name": c.app_name,
        "batch_size": c.batch_size,
        "spool_max_bytes": c.spool_max_bytes,
        "ship_in_process": c.ship_in_process,
    }))
    """
)


def django_probe(tmp_path: Path, cwd: Path, root_urlconf: str, **env: str) -> tuple[Any, str]:
    """Run DJANGO_PROBE in a fresh interpreter; its JSON line and its stderr."""
    script = tmp_path / "probe.py"
    script.write_text(DJANGO_PROBE)
    child = {k: v for k, v in os.environ.items() if not k.startswith(("EVENT_ENGINE_", "DJANGO_"))}
    child["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    child.update(env)
    result = subprocess.run(
        [sys.executable, str(script), root_urlconf],
        cwd=cwd,
        env=child,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_django_reads_strings_warns_once_and_names_the_settings_package(
    tmp_path: Path, plain_env: Path
) -> None:
    """DJANGO_SETTINGS_MODULE=mysite.settings reports 'mysite'; SPOOLER's strings are parsed."""
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "__init__.py").write_text("")
    (site / "urls.py").write_text("urlpatterns = []\n")
    (site / "settings.py").write_text(
        textwrap.dedent(
            """
            SECRET_KEY = "django-insecure-test-only-" + "x" * 40
            ROOT_URLCONF = "mysite.urls"
            INSTALLED_APPS = ["spooler.integrations.django"]
            SPOOLER = {
                "batch_size": "100",
                "spool_max_bytes": "8MiB",
                "ship_in_process": "off",
                "flush_intreval": 1,
            }
            """
        )
    )
    seen, err = django_probe(tmp_path, plain_env, "-", DJANGO_SETTINGS_MODULE="mysite.settings")
    assert seen == {
        "app_name": "mysite",
        "batch_size": 100,
        "spool_max_bytes": 8 << 20,
        "ship_in_process": False,
    }
    warning = (
        "spooler.config WARNING 'flush_intreval' in settings.SPOOLER is not a spooler option "
        "and is ignored; did you mean 'flush_interval'?"
    )
    assert err.count(warning) == 1, err


@pytest.mark.parametrize(
    ("root_urlconf", "expected"), [("shopsite.urls", "shopsite"), ("__main__", "srv")]
)
def test_django_without_a_settings_module_uses_root_urlconfs_package(
    tmp_path: Path, plain_env: Path, root_urlconf: str, expected: str
) -> None:
    """settings.configure(ROOT_URLCONF="shopsite.urls") reports 'shopsite'; __main__ the folder."""
    seen, _ = django_probe(tmp_path, plain_env, root_urlconf)
    assert seen["app_name"] == expected
