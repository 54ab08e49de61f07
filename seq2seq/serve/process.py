"""`translate serve` as a child process: what the load benchmark and the tests start."""

import re
import subprocess
import sys
import threading
import time

import httpx

# The line `translate serve` prints once it listens: with --port 0, the only place the port is.
LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """Starts `translate serve ARGS` on a free loopback port (--port 0: the system's choice,
    read back from its log) and waits until GET /health answers; `url` is then where it
    serves. Its log (stderr lines) is kept in `log`."""

    def __init__(self, args: list[str], timeout_s: float = 120, env: dict | None = None):
        command = [sys.executable, "-m", "seq2seq.cli", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.url = ""
        self.log: list[str] = []
        # Keep reading, or a full pipe would block the server's logging.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not (self.url and self._healthy()):
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
            if not self.url and (found := LISTENING.search(line)):
                self.url = found[1]

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
