"""`translate serve` as a child process: what the load benchmark and the tests start."""

import socket
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    """A port nobody listens on now, on 127.0.0.1 (the system's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Starts `translate serve ARGS` on a free loopback port and waits until GET /health
    answers; `url` is then where it serves. Its log (stderr lines) is kept in `log`."""

    def __init__(self, args: list[str], timeout_s: float = 120, env: dict | None = None):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "seq2seq.cli", "serve", *args, "--port", str(port)]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        # Keep reading, or a full pipe would block the server's logging.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self._reader.join(5)
                raise RuntimeError("translate serve did not start:\n" + "".join(self.log))
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit status (killed if it does not end within timeout_s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
