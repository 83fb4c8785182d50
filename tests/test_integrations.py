"""Framework integrations: real Django, Flask and FastAPI apps report to a real local receiver."""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
from spooler import reporter
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
    reporter._reporter = None


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

    assert spooler.get_reporter() is None  # nothing happens before startup
    with serve(app) as base_url, httpx.Client(base_url=base_url) as client:
        running = spooler.get_reporter()
        assert running is not None and running.active
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
