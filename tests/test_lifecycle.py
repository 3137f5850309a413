"""Stopping `tollgate demo` and `tollgate serve` on the embedded database as systemd, Docker and
CI do (SIGTERM to the process group) and as a terminal does (SIGINT to it): afterwards nothing
the command started is running, under its data directory or in its process group.

The tests share one data directory (the first initialises the database, the others start
faster), which also checks that a run stopped by a signal leaves nothing that keeps the next
run's database from stopping."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.process import free_port
from tests.test_demo import _read_banner

STOP_TIMEOUT = 60


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lifecycle") / "data"
    yield path
    _kill_leftovers(path)  # a failed test leaves no server running on the machine


def _environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "TOLLGATE_ADMIN_TOKEN", "UPSTREAM_BASE_URL"}
    }
    return {**env, "TOLLGATE_DATA_DIR": str(data_dir), **extra}


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=log.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # its own process group, as under systemd or in a container
        )


def _start_demo(data_dir: Path, port: int, log: Path) -> tuple[subprocess.Popen[str], str]:
    process = _start(["demo", "--port", str(port)], _environment(data_dir), log)
    banner = _read_banner(process)
    assert banner.startswith(f"Gateway: http://127.0.0.1:{port}\n"), (banner, log.read_text())
    return process, banner


def _processes_under(path: Path) -> list[str]:
    """The command lines that name `path` (postgres runs with `-D <data dir>/pg`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if str(path) in cmdline:
                    found.append(f"{entry.name}: {cmdline}")
    return found


def _group_members(pgid: int) -> list[str]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(f"{entry.name}: {stat[: stat.rindex(')') + 1]}")
    return members


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _wait(process: subprocess.Popen[str], timeout: float, log: Path) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running {timeout} s after the signal:\n{log.read_text()[-3000:]}")


def _assert_all_stopped(
    process: subprocess.Popen[str], data_dir: Path, ports: list[int], log: Path
) -> None:
    assert process.returncode == 0, log.read_text()[-3000:]
    assert _processes_under(data_dir) == []
    assert _group_members(process.pid) == []
    for port in ports:
        assert _refused(port), port


def test_sigterm_to_the_demos_group_stops_everything(data_dir: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "demo.log"
    process, banner = _start_demo(data_dir, port, log)
    sink = re.search(r"lists them at http://127\.0\.0\.1:(\d+)/", banner)
    assert sink is not None
    assert any("/pg " in line for line in _processes_under(data_dir))  # its postgres

    os.killpg(process.pid, signal.SIGTERM)
    _wait(process, STOP_TIMEOUT, log)
    _assert_all_stopped(process, data_dir, [port, int(sink.group(1))], log)


def test_a_second_sigint_ends_the_drain_and_still_stops_the_database(
    data_dir: Path, tmp_path: Path
) -> None:
    """The first SIGINT stops the listener and waits for the open request (up to 30 s); the
    second stops at once, and the embedded database is stopped all the same."""
    port, log = free_port(), tmp_path / "demo.log"
    process, banner = _start_demo(data_dir, port, log)
    [key] = set(re.findall(r"\btg-[A-Za-z0-9_-]+", banner))
    # A request whose body never comes: the gateway's handler waits for it, which the
    # `100 Continue` it sends when it starts reading says.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
        )
        assert client.recv(100).startswith(b"HTTP/1.1 100 Continue")

        os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while not _refused(port):  # the listener closes at once; the drain goes on
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert process.poll() is None, log.read_text()

        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        _wait(process, 20, log)  # well before the 30 s drain would end
        assert time.monotonic() - started < 20
    _assert_all_stopped(process, data_dir, [port], log)


@pytest.mark.parametrize(
    ("workers", "whole_cgroup"),
    [(1, False), (2, True)],
    ids=["one process", "two workers, postgres signalled too"],
)
def test_sigterm_to_serves_group_stops_everything(
    data_dir: Path, tmp_path: Path, workers: int, whole_cgroup: bool
) -> None:
    """With `whole_cgroup`, as systemd's default KillMode=control-group does, the embedded
    server (in a session of its own, so outside the group) gets SIGTERM as well: a "smart"
    shutdown, which waits for the gateway's connections to close; it ends all the same."""
    port, log = free_port(), tmp_path / "serve.log"
    env = _environment(
        data_dir,
        TOLLGATE_ADMIN_TOKEN="adm-lifecycle",
        UPSTREAM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
    )
    process = _start(["serve", "--port", str(port), "--workers", str(workers)], env, log)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                break
        time.sleep(0.1)
    # The postmaster by its pid file: a backend forked a moment ago still has its command line.
    postmaster = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])

    if whole_cgroup:
        os.kill(postmaster, signal.SIGTERM)
    os.killpg(process.pid, signal.SIGTERM)
    _wait(process, STOP_TIMEOUT, log)
    _assert_all_stopped(process, data_dir, [port], log)


def _kill_leftovers(path: Path) -> None:
    for line in _processes_under(path):
        with contextlib.suppress(OSError):
            os.kill(int(line.split(":")[0]), signal.SIGQUIT)  # postgres: immediate shutdown
    deadline = time.monotonic() + 10
    while _processes_under(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    for line in _processes_under(path):
        with contextlib.suppress(OSError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
