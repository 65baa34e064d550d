"""Real commands as child processes: start, wait for their JSON ready line, stop, measure.

Readiness is the line the command itself prints on stdout (`{"event": "ready", ...}`) once it
can serve; nothing here guesses with sleeps. Every wait is bounded, and a command that exits or
stays silent fails the test with its exit code and the tail of its stderr (kept in a file under
the test's tmp_path), so a failure explains itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

BIN = Path(sys.executable).parent
EDGE_BIN = str(BIN / "tunnelgate-edge")
CONNECTOR_BIN = str(BIN / "tunnelgate")
ORIGIN_SCRIPT = str(Path(__file__).with_name("origin.py"))
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no stderr captured)"
    return "\n".join(text.splitlines()[-lines:]) or "(stderr empty)"


@dataclass
class ChildProcess:
    """A started command, its ready message and where its stderr went (and, when watched,
    its stderr's lines so far: its log)."""

    name: str
    process: trio.Process
    stderr_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _logged: trio.Event = field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def explain(self) -> str:
        return (f"{self.name} (pid {self.pid}, exit code {self.process.returncode}); "
                f"its stderr ends with:\n{tail(self.stderr_path)}")

    async def read_line(self) -> bytes | None:
        """The next stdout line; None once stdout ended."""
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            data = await stdout.receive_some(65536)
            if not data:
                return None
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    async def wait_ready(self, within: float = READY_TIMEOUT) -> dict[str, Any]:
        with trio.move_on_after(within):
            while (line := await self.read_line()) is not None:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("event") == "ready":
                    self.ready = message
                    return message
            await self.process.wait()
            pytest.fail(f"{self.explain()}\nexited before printing its ready line")
        pytest.fail(f"{self.explain()}\nprinted no ready line within {within:g}s")

    async def wait_for_log(self, matches: Callable[[str], bool], what: str, *, after: int = 0,
                           within: float = READY_TIMEOUT) -> str:
        """The first log line from index ``after`` on for which ``matches`` is true, waiting
        for new lines as they are written (``child_process(..., watch_log=True)``)."""
        seen = after
        with trio.move_on_after(within):
            while True:
                for line in self.log_lines[seen:]:
                    if matches(line):
                        return line
                seen = len(self.log_lines)
                await self._logged.wait()
        pytest.fail(f"{self.explain()}\nlogged no line: {what} within {within:g}s")

    async def _copy_log(self, file: Any) -> None:
        """Keep stderr in its file and its lines in ``log_lines``, announcing each batch."""
        stderr = self.process.stderr
        assert stderr is not None
        partial = b""
        with file:
            while data := await stderr.receive_some(65536):
                file.write(data)
                file.flush()
                *lines, partial = (partial + data).split(b"\n")
                self.log_lines.extend(line.decode("utf-8", "replace") for line in lines)
                self._logged.set()
                self._logged = trio.Event()

    async def wait_exit(self, within: float) -> int:
        with trio.move_on_after(within):
            return await self.process.wait()
        pytest.fail(f"{self.explain()}\ndid not exit within {within:g}s")

    def memory_kib(self, field_name: str) -> int:
        """VmRSS / VmHWM (peak resident set) from /proc, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"/proc/{self.pid}/status has no {field_name}")

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal, wait (bounded), then SIGKILL whatever is left."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
            with trio.move_on_after(STOP_TIMEOUT):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        if self.process.stdout is not None:
            await self.process.stdout.aclose()


@asynccontextmanager
async def child_process(args: Sequence[str], *, name: str, log_dir: Path,
                        wait_ready: bool = True, watch_log_in: trio.Nursery | None = None,
                        env: dict[str, str] | None = None) -> AsyncIterator[ChildProcess]:
    """Run `args`; wait for its ready line unless told not to; always stop it on the way out.
    With ``watch_log_in`` its stderr also goes through a task of that nursery, for
    ``ChildProcess.wait_for_log``."""
    stderr_path = log_dir / f"{name}.stderr"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_file = stderr_path.open("wb")
    try:
        process = await trio.lowlevel.open_process(
            list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if watch_log_in is not None else log_file, env=full_env)
    except BaseException:
        log_file.close()
        raise
    child = ChildProcess(name, process, stderr_path)
    if watch_log_in is not None:
        watch_log_in.start_soon(child._copy_log, log_file)  # closes the file at the end
    else:
        log_file.close()  # the child has its own copy of the descriptor
    try:
        if wait_ready:
            await child.wait_ready()
        yield child
    finally:
        with trio.CancelScope(shield=True):
            await child.stop()


async def run_command(args: Sequence[str], *, name: str, log_dir: Path,
                      env: dict[str, str] | None = None,
                      within: float = READY_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """A short command (init, create, route...) that must succeed; stdout is returned."""
    full_env = {**os.environ, **(env or {})}
    with trio.move_on_after(within):
        result = await trio.run_process(list(args), capture_stdout=True, capture_stderr=True,
                                        check=False, env=full_env)
        if result.returncode != 0:
            pytest.fail(f"{name} exited with {result.returncode}:\n"
                        f"{result.stderr.decode(errors='replace')}")
        (log_dir / f"{name}.stdout").write_bytes(result.stdout)
        return result
    pytest.fail(f"{name} did not finish within {within:g}s")
