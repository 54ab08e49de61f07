"""`translate serve` as a child process: what the load benchmark and the tests start."""

import re
import subprocess
import sys
import threading
import time

_RUNNING = re.compile(r"Uvicorn running on (http://\S+)")


class ServerProcess:
    """Starts `translate serve ARGS --port 0` (the system picks a free port) and waits until it
    listens; `url` is then where it answers. Its log is kept in `log` (stderr lines)."""

    def __init__(self, args: list[str], timeout_s: float = 120, env: dict | None = None):
        command = [sys.executable, "-m", "seq2seq.cli", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        self.url = ""
        deadline = time.monotonic() + timeout_s
        for line in self.proc.stderr:  # uvicorn logs to stderr
            self.log.append(line)
            if match := _RUNNING.search(line):
                self.url = match.group(1)
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.stop()
            raise RuntimeError("translate serve did not start:\n" + "".join(self.log))
        # Keep reading, or a full pipe would block the server's logging.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

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
