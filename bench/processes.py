"""Start, watch and stop the processes of one benchmark run.

Every server the harness starts (nginx, sshd, ssh, the edge, connectors, the WebSocket origin)
goes through one `ProcessGroup`, so that a finished run, an error or Ctrl-C stops all of them and
nothing else: processes are stopped by the ids recorded when they were started, together with the
children they forked (nginx workers, sshd's per-connection processes).

Readiness is polled with a short interval. That is acceptable in a benchmark harness (it only
decides when measuring may begin) and keeps the harness free of threads.

Errors::

    BenchError                 anything that makes one target or measurement unusable
    └── ProcessFailed          a managed process exited early or never became ready
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_INTERVAL_S = 0.05
STOP_GRACE_S = 5.0
_SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 share this number
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\w*: ")


class BenchError(Exception):
    """A target or measurement is unusable; the message is shown in the results as the reason."""


class ProcessFailed(BenchError):
    """A managed process exited early or did not become ready in time."""


def free_port() -> int:
    """Ask the kernel for a free loopback port (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is parenthesised and may contain spaces: parse after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def meaningful_tail(text: str, lines: int = 3) -> str:
    """What a failed command said, in one line: its exception message, else its last lines.

    Traceback frames and exception-group borders are left out, so the reason fits in a table.
    """
    meaningful = [
        cleaned
        for cleaned in (line.strip().strip("|+-").strip() for line in text.splitlines())
        if cleaned and not cleaned.startswith(("File ", "^", "Traceback", "Exception Group"))
    ]
    errors = [line for line in meaningful if _EXCEPTION_LINE.match(line)]
    if errors:
        return errors[-1]
    return " / ".join(meaningful[-lines:]) or "(no output)"


def process_tree(root: int) -> list[int]:
    """The root pid followed by all of its living descendants."""
    children = _children_map()
    tree = [root]
    index = 0
    while index < len(tree):
        tree.extend(children.get(tree[index], []))
        index += 1
    return tree


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def tree_rss_kib(root: int) -> int:
    return sum(rss_kib(pid) for pid in process_tree(root))


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def tcp_nodelay_flags(pid: int, port: int) -> list[bool]:
    """TCP_NODELAY of every connected TCP socket of `pid` whose local or peer port is `port`.

    The socket is borrowed with pidfd_getfd(2) (a duplicate descriptor; the original is left
    untouched), which needs ptrace rights over the process: the harness's own children qualify.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    flags: list[bool] = []
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return flags
    try:
        for fd_name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd_name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            borrowed = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd_name), 0)
            if borrowed < 0:
                continue
            with socket.socket(fileno=borrowed) as sock:
                if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                    continue
                try:
                    peer_port = sock.getpeername()[1]
                except OSError:
                    continue  # a listening socket
                if port in (peer_port, sock.getsockname()[1]):
                    flags.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
    finally:
        os.close(pidfd)
    return flags


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    watch: Sequence[ManagedProcess] = (),
) -> None:
    """Poll `condition` until true; fail early when a watched process has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        for process in watch:
            if not process.alive():
                if condition():  # it may have finished its work just before exiting
                    return
                raise ProcessFailed(f"{what}: {process.exit_reason()}")
        if time.monotonic() > deadline:
            raise ProcessFailed(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(POLL_INTERVAL_S)


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def log_tail(self, lines: int = 3) -> str:
        return meaningful_tail(
            self.stderr_path.read_text(errors="replace") + self.stdout_text(), lines
        )

    def exit_reason(self) -> str:
        code = self.popen.poll()
        state = "is still running" if code is None else f"exited with code {code}"
        return f"{self.name} {state}; last output: {self.log_tail()}"

    def tree_rss_kib(self) -> int:
        return tree_rss_kib(self.pid) if self.alive() else 0


@dataclass
class ProcessGroup:
    """Owns every long-running process of a run; `stop_all` runs on any exit path."""

    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        keep_stdin_open: bool = False,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        unique = f"{name}-{len(self.processes)}"
        stdout_path = self.log_dir / f"{unique}.out"
        stderr_path = self.log_dir / f"{unique}.err"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.PIPE if keep_stdin_open else subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    cwd=cwd,
                    # Own session: Ctrl-C reaches only the harness, which then stops
                    # everything in order instead of racing the children.
                    start_new_session=True,
                )
            except OSError as error:
                raise ProcessFailed(f"{name}: cannot start {argv[0]}: {error}") from error
        process = ManagedProcess(name, list(argv), popen, stdout_path, stderr_path)
        self.processes.append(process)
        return process

    def stop(self, process: ManagedProcess) -> None:
        if process in self.processes:
            self.processes.remove(process)
        tree = process_tree(process.pid) if process.alive() else []
        if process.popen.stdin is not None:
            with contextlib.suppress(OSError):
                process.popen.stdin.close()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
        for pid in tree[1:]:
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for process in reversed(list(self.processes)):
            self.stop(process)

    @contextlib.contextmanager
    def running(self) -> Iterator[ProcessGroup]:
        try:
            yield self
        finally:
            self.stop_all()
