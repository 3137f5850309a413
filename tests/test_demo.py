"""`tollgate demo` as a user runs it: a real process on its own embedded database, its banner
(SPEC 2), and the printed key working through the official SDK."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.process import free_port


def _read_banner(process: subprocess.Popen[str], timeout: float = 120) -> str:
    """stdout up to the end of the banner (or the process's end), read in a thread so that a
    demo that hangs fails the test instead of blocking it."""
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> str:
        lines: list[str] = []
        for line in stdout:
            lines.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        return "".join(lines)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(read).result(timeout=timeout)
    finally:
        pool.shutdown(wait=False)  # the test stops the process, which ends the read


def test_demo_prints_a_working_key_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "TOLLGATE_ADMIN_TOKEN", "UPSTREAM_BASE_URL"}
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "demo", "--port", str(port)],
        cwd=tmp_path,  # the embedded database goes to ./.tollgate, here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = _read_banner(process)
        assert banner.startswith(f"Gateway: http://127.0.0.1:{port}\n"), banner
        assert re.findall(r"https?://[^\s\"/]+", banner)[0] == f"http://127.0.0.1:{port}"
        keys = set(re.findall(r"\btg-[A-Za-z0-9_-]+", banner))
        assert len(keys) == 1, keys  # no other printed token starts with `tg-`
        [key] = keys
        assert "curl " in banner and "from openai import OpenAI" in banner

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        reply = client.chat.completions.create(
            model="llama-3.3-70b-online", messages=[{"role": "user", "content": "Hi!"}]
        )
        assert reply.choices[0].message.content == "You said: Hi!"
        assert reply.usage is not None and reply.usage.prompt_tokens > 0
        assert (tmp_path / ".tollgate").is_dir()

        # The banner's notification example: an end user past the demo's per-user limit, and
        # the signed webhook it sends, listed by the demo's own receiver.
        sink = re.search(r"lists them at (http://127\.0\.0\.1:\d+)/", banner)
        assert sink is not None, banner
        with pytest.raises(openai.APIStatusError) as refused:
            client.with_options(max_retries=0).chat.completions.create(
                model="llama-3.3-70b",
                messages=[{"role": "user", "content": "Hi!"}],
                user="alice",
                max_tokens=1_000_000,
            )
        assert refused.value.status_code == 402
        assert refused.value.body["code"] == "user_limit_exceeded"  # type: ignore[index]
        deadline = time.monotonic() + 10
        while "user.limit_reached" not in (page := httpx.get(f"{sink.group(1)}/").text):
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
        assert "✓ signed" in page

        # The banner's metrics: the request above is counted by model and status.
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert f"{port}/metrics" in banner
        assert 'model="llama-3.3-70b-online",status="200"' in metrics

        # The console's one-time link sets the demo operator's password; then it signs in.
        link = re.search(r"(http://\S+/console/set-password\?token=\S+)", banner)
        assert link is not None, banner
        with httpx.Client(timeout=30) as browser:
            form = browser.get(link.group(1))
            assert form.status_code == 200 and "demo@tollgate.local" in form.text
            csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
            token = link.group(1).split("token=")[1]
            assert csrf is not None
            done = browser.post(
                f"http://127.0.0.1:{port}/console/set-password",
                data={"token": token, "password": "demo password 123", "_csrf_token": csrf[1]},
            )
            assert done.status_code == 303
            login = browser.get(f"http://127.0.0.1:{port}/console/login")
            csrf = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
            assert csrf is not None
            signed = browser.post(
                f"http://127.0.0.1:{port}/console/login",
                data={
                    "email": "demo@tollgate.local",
                    "password": "demo password 123",
                    "_csrf_token": csrf[1],
                },
            )
            assert signed.status_code == 303
            assert browser.get(f"http://127.0.0.1:{port}/console").status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0
