"""moshi-mlx-chat in a subprocess for the end-to-end tests: started, watched until it listens, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import threading


class ChatProcess:
    """Runs `cmd` (a chat command line) with its stderr collected by a thread.

        chat = ChatProcess([sys.executable, "-m", "app.chat", ...])
        chat.wait_listening()        # the model is loaded and warm, the sound stream open
        ...
        chat.stop()                  # SIGINT, as Ctrl-C; returns the exit code
    """

    def __init__(self, cmd: list[str], env: dict | None = None):
        env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("listening:"):
                self._listening.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_listening(self, timeout: float = 180) -> None:
        assert self._listening.wait(timeout), "chat never started listening:\n" + self.stderr

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Sends `sig` and waits for the exit (killed if it does not come); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode
