"""The command line: ship (one per spool, clean stops, --once), status and receive."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spooler.cli import main
from spooler.config import ENV_VARS, Config
from spooler.receiver import Faults, Receiver
from spooler.shipper import Shipper, ShipperLock
from spooler.spool import COUNTER_NAMES, Spool
from tests.conftest import free_port, make_entry, wait_for

KEY = "sk_test_CL1_zq8Xv3Wk7Pm2Lr9T"


def child_env(**values: str) -> dict[str, str]:
    """This environment without any EVENT_ENGINE_CLOUD_* variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENT_ENGINE_CLOUD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


def ship_env(spool_path: str, endpoint: str, **extra: str) -> dict[str, str]:
    return child_env(
        EVENT_ENGINE_CLOUD_KEY=KEY,
        EVENT_ENGINE_CLOUD_ENDPOINT=endpoint,
        EVENT_ENGINE_CLOUD_SPOOL_PATH=spool_path,
        **extra,
    )


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spooler", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lock_holder(spool_path: str) -> int | None:
    try:
        with open(spool_path + ".ship.lock", encoding="ascii") as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with Receiver(api_key=KEY, db_path=tmp_path / "cloud.db") as r:
        yield r


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The key in the environment for in-process main(); signal handlers put back after."""
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(ENV_VARS["api_key"], KEY)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def fill(spool_path: str, n: int, *, name: str = "order.placed", start: int = 0) -> None:
    with Spool(spool_path) as s:
        assert s.append_many([make_entry(i, name=name) for i in range(start, start + n)]) == n


# -- ship ------------------------------------------------------------------------------


def test_a_second_ship_process_exits_3_with_a_clear_message(
    tmp_path: Path, spool_path: str
) -> None:
    """``ship`` on a spool another shipper holds exits with code 3 and names the holder."""
    fill(spool_path, 1)
    lock = ShipperLock(spool_path)
    lock.acquire()
    try:
        with spawn(["ship"], ship_env(spool_path, "http://127.0.0.1:9"), tmp_path) as proc:
            _, err = proc.communicate(timeout=30)  # a hang detector
    finally:
        lock.release()
    assert proc.returncode == 3
    assert "another shipper" in err and f"pid {os.getpid()}" in err
    assert "Traceback" not in err


def test_the_lock_is_released_when_the_shipper_is_killed(
    tmp_path: Path, spool_path: str, receiver: Receiver
) -> None:
    """After the shipping process dies by SIGKILL, a new shipper can start at once."""
    fill(spool_path, 1)
    config = Config(api_key=KEY, endpoint=receiver.url, spool_path=spool_path)
    with spawn(["ship"], ship_env(spool_path, receiver.url), tmp_path) as proc:
        try:
            assert wait_for(lambda: lock_holder(spool_path) == proc.pid), proc.poll()
            blocked = Shipper(config)
            assert blocked.start() is False
            blocked.close()
        finally:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    taker = Shipper(config)
    try:
        assert taker.start() is True
    finally:
        taker.stop()


def test_ship_stops_cleanly_on_sigterm_and_keeps_what_it_did_not_send(
    tmp_path: Path, spool_path: str, receiver: Receiver
) -> None:
    """SIGTERM ends ``ship`` with 0 soon; every entry either arrived or is still spooled."""
    receiver.set_faults(Faults(delay=0.05))
    fill(spool_path, 200)
    env = ship_env(
        spool_path,
        receiver.url,
        EVENT_ENGINE_CLOUD_BATCH_SIZE="5",
        EVENT_ENGINE_CLOUD_FLUSH_INTERVAL="0.05",
    )
    with spawn(["ship"], env, tmp_path) as proc:
        try:
            assert wait_for(lambda: receiver.entry_count() >= 10), proc.poll()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)  # a hang detector
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err
    with Spool(spool_path) as s:
        waiting = [r.entry["event_id"] for r in s.read_batch(1000)]
    arrived = [e["event_id"] for e in receiver.entries()]
    assert waiting, "everything was delivered before the signal: nothing was in flight"
    assert sorted(set(arrived) | set(waiting)) == list(range(200))
    assert len(arrived) == len(set(arrived))
    # A stop interrupts the request in flight: the Cloud may have stored that one batch
    # without the shipper hearing so. It stays spooled and is sent again (same entry_ids).
    assert len(set(arrived) & set(waiting)) <= 5


def test_ship_once_exits_0_when_everything_is_delivered(
    spool_path: str, receiver: Receiver, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ship --once`` drains the spool and exits 0 when all of it was delivered."""
    fill(spool_path, 12)
    code = main(["ship", "--once", "--spool", spool_path, "--endpoint", receiver.url])
    assert code == 0
    assert [e["event_id"] for e in receiver.entries()] == list(range(12))
    assert KEY not in "".join(capsys.readouterr())


def test_ship_once_exits_1_when_the_cloud_is_down(
    spool_path: str,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``ship --once`` gives up after its retries and exits 1, leaving the rows spooled."""
    fill(spool_path, 3)
    endpoint = f"http://127.0.0.1:{free_port()}"
    argv = ["ship", "--once", "--spool", spool_path, "--endpoint", endpoint]
    with caplog.at_level(logging.INFO, logger="spooler.cli"):
        code = main([*argv, "--max-attempts", "2", "--backoff-max", "0.05"])
    assert code == 1
    with Spool(spool_path) as s:
        stats = s.stats()
    assert stats.depth == 3 and stats.last_error
    [summary] = [r for r in caplog.records if r.getMessage().startswith("--once:")]
    assert summary.levelno == logging.WARNING
    assert "delivered 0, 3 still waiting (last error: " in summary.getMessage()
    assert KEY not in "".join(capsys.readouterr()) + caplog.text


def test_ship_once_exits_0_when_only_dead_letters_remain(
    spool_path: str, receiver: Receiver, cli_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead-lettered entry does not wait: --once exits 0 and its summary counts it."""
    receiver.set_faults(Faults(reject_event_names=frozenset({"poison"})))
    fill(spool_path, 2)
    fill(spool_path, 1, name="poison", start=2)
    with caplog.at_level(logging.INFO, logger="spooler.cli"):
        code = main(["ship", "--once", "--spool", spool_path, "--endpoint", receiver.url])
    assert code == 0
    assert [e["event_id"] for e in receiver.entries()] == [0, 1]
    with Spool(spool_path) as s:
        stats = s.stats()
    assert (stats.depth, stats.dead_letters, stats.counters["dead_lettered"]) == (0, 1, 1)
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--once:")]
    assert summary.startswith("--once: delivered 2, dead-lettered 1 (refused by the Cloud")
    assert summary.endswith(", 0 still waiting")


def test_ship_once_exits_1_when_entries_wait_beside_dead_letters(
    spool_path: str, receiver: Receiver, cli_env: None
) -> None:
    """With dead letters kept and the Cloud then failing, what still waits decides the 1."""
    argv = ["ship", "--once", "--spool", spool_path, "--endpoint", receiver.url]
    receiver.set_faults(Faults(reject_event_names=frozenset({"poison"})))
    fill(spool_path, 1, name="poison")
    fill(spool_path, 1, start=1)
    assert main(argv) == 0
    receiver.set_faults(Faults(status=503, rate=1.0))
    fill(spool_path, 2, start=2)
    assert main([*argv, "--max-attempts", "1", "--backoff-max", "0.05"]) == 1
    with Spool(spool_path) as s:
        stats = s.stats()
    assert (stats.depth, stats.dead_letters) == (2, 1)


def test_ship_rejects_a_nonsensical_max_attempts(
    spool_path: str, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--max-attempts 0`` is a one-line usage error, not a shipper that never sends."""
    assert main(["ship", "--once", "--spool", spool_path, "--max-attempts", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "spooler ship: argument --max-attempts: must be at least 1, got 0 (see spooler ship --help)"
    )
    assert not os.path.exists(spool_path)


def test_ship_flags_go_through_the_config_parser_and_errors_name_the_flag(
    spool_path: str, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--batch-size fifty`` is refused in one line naming the flag; nothing is created."""
    assert main(["ship", "--once", "--spool", spool_path, "--batch-size", "fifty"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "spooler ship: configuration error: batch_size: must be an integer, got 'fifty' "
        "(from --batch-size)\n"
    )
    assert not os.path.exists(spool_path)


# -- status ----------------------------------------------------------------------------


@pytest.fixture
def used_spool(spool_path: str, receiver: Receiver) -> str:
    """A spool that delivered some entries, dead-lettered one, and has two waiting."""
    receiver.set_faults(Faults(reject_event_names=frozenset({"poison"})))
    fill(spool_path, 3)
    fill(spool_path, 1, name="poison", start=3)
    config = Config(api_key=KEY, endpoint=receiver.url, spool_path=spool_path)
    shipper = Shipper(config)
    try:
        shipper.drain()
    finally:
        shipper.stop()
    receiver.set_faults(Faults(status=503, rate=1.0))
    fill(spool_path, 2, start=4)
    shipper = Shipper(config, max_attempts=1)
    try:
        shipper.drain()
    finally:
        shipper.stop()
    return spool_path


def test_status_shows_every_number_and_never_the_key(
    used_spool: str, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status`` prints path, depth, bytes, oldest age, counters, last delivery and error."""
    assert main(["status", "--spool", used_spool]) == 0
    out, err = capsys.readouterr()
    with Spool(used_spool) as s:
        stats = s.stats()
    assert used_spool in out
    assert "waiting        2 entries" in out
    assert "oldest" in out and "ago" in out
    assert "on disk" in out and "KiB" in out
    for name in COUNTER_NAMES:
        assert f"{name} {stats.counters[name]}" in out
    assert "shipped 3" in out and "dead_lettered 1" in out
    assert stats.last_delivery_at is not None and stats.last_delivery_at in out
    assert stats.last_error == "HTTP 503" and stats.last_error_at is not None
    assert f"last error     HTTP 503 (at {stats.last_error_at}, " in out
    assert re.search(r"last error .* s ago\)$", out, re.MULTILINE)
    assert KEY not in out + err


def test_status_json_has_every_field_and_never_the_key(
    used_spool: str, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --json`` carries the same facts, machine-readable, without the key."""
    assert main(["status", "--spool", used_spool, "--json"]) == 0
    out, err = capsys.readouterr()
    data: dict[str, Any] = json.loads(out)
    assert data["path"] == used_spool and data["exists"] is True
    assert data["depth"] == 2
    assert data["bytes_on_disk"] > 0
    assert data["oldest_age_seconds"] >= 0
    assert set(COUNTER_NAMES) <= set(data["counters"])
    assert data["counters"]["shipped"] == 3 and data["counters"]["dead_lettered"] == 1
    assert data["last_delivery_at"] and data["last_error"] == "HTTP 503"
    assert KEY not in out + err


@pytest.mark.parametrize("as_json", [False, True])
def test_status_of_a_missing_spool_says_so_and_exits_1(
    tmp_path: Path, cli_env: None, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """``status`` on a path with no spool says there is none and exits 1."""
    missing = str(tmp_path / "nowhere" / "spool.db")
    assert main(["status", "--spool", missing, *(["--json"] if as_json else [])]) == 1
    out = capsys.readouterr().out
    if as_json:
        assert json.loads(out) == {"path": missing, "exists": False}
    else:
        assert f"no spool at {missing}" in out
    assert not os.path.exists(missing)


# -- receive ---------------------------------------------------------------------------


def read_line(stream: Any, timeout: float) -> str:
    """One line from a child's pipe, or '' if none comes within ``timeout``."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return str(stream.readline()) if ready else ""


def test_receive_stores_a_valid_batch_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``receive --port 0`` prints its URL, stores a valid batch, and exits 0 on SIGTERM."""
    db = tmp_path / "received.db"
    env = child_env(EVENT_ENGINE_CLOUD_KEY=KEY)
    with spawn(["receive", "--port", "0", "--db", str(db)], env, tmp_path) as proc:
        try:
            line = read_line(proc.stderr, timeout=30)  # a hang detector
            assert line.startswith("receiving on http://127.0.0.1:"), line
            url = line.split()[2]
            entry = dict(make_entry(1), entry_id="e-1", timestamp="2026-01-15T10:30:00Z")
            headers = {
                "Authorization": f"Bearer {KEY}",
                "X-EventEngine-Gem-Version": "0.1.0",
                "Idempotency-Key": "k-1",
            }
            with httpx.Client(timeout=10) as http:
                answer = http.post(url + "/events", json={"entries": [entry]}, headers=headers)
            assert answer.status_code == 202 and answer.json()["accepted"] == 1
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)  # a hang detector
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert KEY not in line + out + err
    assert Receiver(api_key=KEY, db_path=db).entry_ids() == ["e-1"]


# -- flags and user errors ------------------------------------------------------------


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m spooler ARGS`` in a real child process."""
    return subprocess.run(
        [sys.executable, "-m", "spooler", *args],
        env=child_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,  # a hang detector
    )


def one_line(text: str) -> str:
    """``text`` if it is exactly one line; fails the test otherwise."""
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text.strip()


@pytest.fixture
def not_a_database(tmp_path: Path) -> Path:
    """A file that is not an SQLite database, where a spool was expected."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database, just notes\n" * 200)
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["-vv", "status", "--spool", "{path}"],
        ["status", "--spool", "{path}", "-vv"],
        ["-v", "status", "-v", "--spool", "{path}"],
        ["--verbose", "status", "--verbose", "--spool", "{path}"],
    ],
)
def test_verbosity_flags_count_before_and_after_the_command(
    tmp_path: Path, not_a_database: Path, argv: list[str]
) -> None:
    """-v/-vv go on either side of the command and add up: -vv shows the traceback."""
    result = run_cli([a.format(path=not_a_database) for a in argv], tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "sqlite3.DatabaseError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("spooler status: ")


@pytest.mark.parametrize("where", ["before", "after"])
def test_v_and_q_work_before_the_command(tmp_path: Path, where: str) -> None:
    """``spooler -v status`` and ``spooler -q status`` run (they used to be usage errors)."""
    missing = str(tmp_path / "none.db")
    for flag in ("-v", "-q"):
        argv = [flag, "status", "--spool", missing]
        if where == "after":
            argv = ["status", "--spool", missing, flag]
        result = run_cli(argv, tmp_path)
        assert result.returncode == 1, result.stderr
        assert result.stdout == f"no spool at {missing}\n" and result.stderr == ""


@pytest.mark.parametrize("argv", [["-q", "ship", "--once"], ["ship", "--once", "-q"]])
def test_q_before_or_after_the_command_leaves_warnings_only(
    tmp_path: Path, spool_path: str, receiver: Receiver, argv: list[str]
) -> None:
    """-q silences ship's INFO lines wherever it stands; without it they show."""
    fill(spool_path, 2)
    env = ship_env(spool_path, receiver.url)
    loud = subprocess.run(
        [sys.executable, "-m", "spooler", "ship", "--once"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loud.returncode == 0 and "INFO spooler.cli: --once: delivered 2" in loud.stderr
    fill(spool_path, 2, start=2)
    quiet = subprocess.run(
        [sys.executable, "-m", "spooler", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert len(receiver.entries()) == 4


def test_q_and_v_together_are_refused(tmp_path: Path) -> None:
    """Asking for less and more logging at once is a one-line usage error."""
    result = run_cli(["-q", "status", "-v"], tmp_path)
    assert result.returncode == 2
    assert one_line(result.stderr) == "spooler: -q and -v contradict each other; give one of them"


def test_help_and_version_return_0_from_main(capsys: pytest.CaptureFixture[str]) -> None:
    """main(argv) returns argparse's exit status instead of raising SystemExit."""
    assert main(["--version"]) == 0
    assert main(["status", "--help"]) == 0
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err
    assert one_line(err).startswith("spooler: argument COMMAND: invalid choice: 'nonsense'")


def test_status_of_a_file_that_is_not_a_database_is_one_line_and_leaves_it_alone(
    tmp_path: Path, not_a_database: Path
) -> None:
    """status on a non-database exits 2 with one line pointing at --spool; the file is intact."""
    before = not_a_database.read_bytes()
    for extra in ([], ["--json"]):
        result = run_cli(["status", "--spool", str(not_a_database), *extra], tmp_path)
        assert result.returncode == 2 and result.stdout == ""
        line = one_line(result.stderr)
        assert line.startswith(f"spooler status: {not_a_database} is not an SQLite database")
        assert "point --spool or EVENT_ENGINE_CLOUD_SPOOL_PATH at the spool" in line
    assert not_a_database.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [not_a_database.name]


def test_status_of_the_receivers_database_says_it_is_not_a_spool(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Pointing status at the receiver's SQLite file is one line, not 'no such column'."""
    result = run_cli(["status", "--spool", receiver.db_path], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith(
        f"spooler status: {receiver.db_path} is an SQLite database but not a spooler spool"
    )
    assert "--spool" in line and "Traceback" not in result.stderr


def test_receive_on_a_port_in_use_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    """A taken port exits 2 with one line suggesting --port, not an OSError traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            ["receive", "--port", str(port), "--db", str(tmp_path / "r.db")],
            tmp_path,
            EVENT_ENGINE_CLOUD_KEY=KEY,
        )
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"spooler receive: 127.0.0.1:{port} is already in use (another receiver?); stop that "
        "process, or pick another port with --port (--port 0 picks a free one)"
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--fail-rate", "0.5"],
            "spooler receive: --fail-rate and --fail-first inject an HTTP status: add "
            "--fail-status, e.g. --fail-status 503 --fail-rate 0.5",
        ),
        (
            ["--fail-first", "3"],
            "spooler receive: --fail-rate and --fail-first inject an HTTP status: add "
            "--fail-status, e.g. --fail-status 503 --fail-rate 0.5",
        ),
        (
            ["--fail-status", "503", "--fail-rate", "1.5"],
            "spooler receive: argument --fail-rate: must be between 0 and 1, got 1.5 "
            "(see spooler receive --help)",
        ),
        (
            ["--fail-status", "42"],
            "spooler receive: argument --fail-status: must be between 100 and 599, got 42 "
            "(see spooler receive --help)",
        ),
        (
            ["--delay", "soon"],
            "spooler receive: argument --delay: expected a number of seconds, got 'soon' "
            "(see spooler receive --help)",
        ),
    ],
)
def test_receive_fault_flags_are_checked_in_one_line(
    tmp_path: Path,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    """Fault flags that cannot work are refused before anything listens, naming the flag."""
    db = tmp_path / "r.db"
    assert main(["receive", "--port", "0", "--db", str(db), *flags]) == 2
    assert one_line(capsys.readouterr().err) == expected
    assert not db.exists()


def test_receive_with_a_db_that_is_not_a_database_is_one_line(
    tmp_path: Path, not_a_database: Path, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db pointing at some other file is refused in one line; the file is left alone."""
    before = not_a_database.read_bytes()
    assert main(["receive", "--port", "0", "--db", str(not_a_database)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"spooler receive: cannot use {not_a_database} as the receiver's")
    assert not_a_database.read_bytes() == before


def test_status_never_prints_the_key_even_on_errors(tmp_path: Path, not_a_database: Path) -> None:
    """The key in the environment appears in no output of status, good or bad."""
    for spool in (str(not_a_database), str(tmp_path / "none.db")):
        for extra in ([], ["--json"], ["-vv"]):
            result = run_cli(
                ["status", "--spool", spool, *extra], tmp_path, EVENT_ENGINE_CLOUD_KEY=KEY
            )
            assert KEY not in result.stdout + result.stderr


def readme_commands() -> dict[str, str]:
    """The README's command-line table: command -> its synopsis cell."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Command line\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+) ([^`]*)` \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def cli_help(*args: str) -> str:
    """What `spooler <args> --help` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        assert main([*args, "--help"]) == 0
    return out.getvalue()


def test_the_readme_command_table_lists_every_flag_the_parser_has() -> None:
    """Each command's flags and their metavars in the README are exactly what its --help
    usage line shows."""
    top = cli_help()
    commands = re.findall(r"^ {4}(\w+) {2,}", top.split("positional arguments:", 1)[1], re.M)
    documented = readme_commands()
    assert commands and sorted(documented) == sorted(commands)
    for name in commands:
        usage = cli_help(name).split("\n\n", 1)[0]
        flags = set(re.findall(r"--[a-z][a-z-]*(?: [A-Z]+)?", usage))
        in_readme = set(re.findall(r"--[a-z][a-z-]*(?: [A-Z]+)?", documented[name]))
        assert in_readme == flags, name


# -- crashes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_shipper_killed_again_and_again_loses_nothing(
    tmp_path: Path, spool_path: str, receiver: Receiver
) -> None:
    """SIGKILLed mid-delivery many times and restarted, ship loses nothing; re-sends are dupes."""
    receiver.set_faults(Faults(delay=0.02))
    env = ship_env(
        spool_path,
        receiver.url,
        EVENT_ENGINE_CLOUD_BATCH_SIZE="25",
        EVENT_ENGINE_CLOUD_FLUSH_INTERVAL="0.05",
    )
    rng = random.Random()
    total = 3000
    fill(spool_path, total)
    for _ in range(9):
        with spawn(["ship"], env, tmp_path) as proc:
            # Startup takes ~0.4 s: kill somewhere in the first ~0.6 s of delivery.
            time.sleep(rng.uniform(0.4, 1.0))
            proc.kill()
            proc.communicate(timeout=30)
        fill(spool_path, 50, start=total)
        total += 50
    # The kills landed during delivery, not all before it began.
    assert 0 < receiver.entry_count() < total
    with spawn(["ship", "--once"], env, tmp_path) as proc:
        _, err = proc.communicate(timeout=60)  # a hang detector
    assert proc.returncode == 0, err

    arrived = [e["event_id"] for e in receiver.entries()]
    assert arrived == list(range(total))  # none lost, first arrivals in append order
    assert receiver.entry_count() == total
    sent = sum(r["entries"] for r in receiver.requests() if r["path"] == "/events")
    accepted = [r for r in receiver.requests() if r["path"] == "/events" and r["status"] == 202]
    assert sum(r["entries"] for r in accepted) == total + receiver.duplicate_count()
    assert sent >= total
    with Spool(spool_path) as s:
        stats = s.stats()
    assert stats.depth == 0
    assert stats.counters["shipped"] == stats.counters["appended"] == total


def test_only_cli_py_writes_to_the_terminal() -> None:
    """The library never prints; the command line writes through cli.py's one writer."""
    import ast

    package = Path(__file__).resolve().parents[1] / "spooler"
    printing = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.add(path.relative_to(package).as_posix())
    assert printing == {"cli.py"}


@pytest.mark.slow
def test_a_shipper_killed_while_acknowledgements_wait_for_a_checkpoint_loses_nothing(
    tmp_path: Path, spool_path: str
) -> None:
    """A small WAL makes ``ship`` checkpoint every few batches on its checkpoint thread,
    holding acknowledgements back meanwhile; SIGKILLed at random moments and restarted,
    it loses nothing, and what it sends twice is bounded by what it may hold back.
    Counted by an independent receiver (tests/cloud.py), not spooler's own."""
    from spooler.shipper import ACK_BACKLOG
    from tests.cloud import CountingCloud

    # `ship`, with each checkpoint 50 ms slower (a slow disk), so that kills often
    # land while acknowledgements are held back.
    slow_ship = (
        "import sys, time\n"
        "import spooler._checkpointer as c\n"
        "from spooler.cli import main\n"
        "class SlowDisk(c.Spool):\n"
        "    def checkpoint(self, **kw):\n"
        "        time.sleep(0.05)\n"
        "        return super().checkpoint(**kw)\n"
        "c.Spool = SlowDisk\n"
        "sys.exit(main(['ship']))\n"
    )
    batch, n, kills = 20, 6000, 8
    with Spool(spool_path, max_bytes=4 << 20) as s:
        assert s.append_many([make_entry(i) for i in range(n)]) == n
        sid = s.spool_id
    rng = random.Random()
    with CountingCloud() as cloud:
        env = ship_env(
            spool_path,
            cloud.url,
            EVENT_ENGINE_CLOUD_BATCH_SIZE=str(batch),
            EVENT_ENGINE_CLOUD_SPOOL_MAX_BYTES=str(4 << 20),
        )
        for _ in range(kills):
            before = cloud.event_posts()
            with subprocess.Popen(
                [sys.executable, "-c", slow_ship],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ) as proc:
                # Kill after a random number of requests (a checkpoint every few),
                # at a random moment of the one after.
                posts = before + rng.randint(5, 45)
                assert wait_for(lambda: cloud.event_posts() > posts, timeout=30)  # noqa: B023
                time.sleep(rng.uniform(0.0, 0.01))
                proc.kill()
                proc.communicate(timeout=30)
        arrived_before_last = len(set(cloud.event_ids()))
        with spawn(["ship", "--once"], env, tmp_path) as proc:
            _, err = proc.communicate(timeout=120)  # a hang detector
        assert proc.returncode == 0, err
        ids = cloud.event_ids()
    assert 0 < arrived_before_last < n  # the kills landed during the drain
    expected = [f"{sid}-{i}" for i in range(1, n + 1)]
    first_arrivals = list(dict.fromkeys(ids))
    assert first_arrivals == expected  # none lost, first arrivals in append order
    # Each kill may resend the batches held back plus the one in flight, no more.
    assert len(ids) - n <= kills * (ACK_BACKLOG + 1) * batch
    with Spool(spool_path, max_bytes=4 << 20) as s:
        stats = s.stats()
    assert stats.depth == 0
    assert stats.counters["shipped"] == stats.counters["appended"] == n
