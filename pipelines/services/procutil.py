"""Process plumbing shared by the local services: free ports, spawning, verifying, stopping.

Why this exists: the local platform runs real servers as background processes that outlive the
command that started them (``duplexalign services up`` returns, the servers keep running). Their
PIDs are written to a state file, and a state file can go stale (reboot, crash, ``kill -9``):
the PID may since belong to a stranger. So a PID is only ever signalled after checking that the
process still has the recorded start time *and* a command line naming this instance.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import psutil


@dataclass
class ProcessRecord:
    """What we remember about a server process, enough to recognise it again later."""

    pid: int
    # psutil's create_time (seconds since the epoch), for humans and non-Linux systems.
    create_time: float
    # Substrings that must all appear in the process command line (e.g. the data dir, the port).
    markers: list[str] = field(default_factory=list)
    # Start time in clock ticks since boot (/proc/<pid>/stat field 22). With the PID it
    # identifies a process uniquely (a recycled PID gets a new start time), and unlike
    # create_time it does not move when the wall clock / boot-time estimate is adjusted, which
    # happens on VMs (psutil derives create_time from /proc/stat's btime, which can shift by 1 s).
    start_ticks: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProcessRecord":
        return cls(
            pid=int(data["pid"]),
            create_time=float(data.get("create_time") or 0.0),
            markers=[str(m) for m in data.get("markers", [])],
            start_ticks=int(data["start_ticks"]) if data.get("start_ticks") is not None else None,
        )


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (None where /proc is not available)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[19])  # fields[0] is field 3 ("state"), so field 22 is index 19


def free_ports(count: int, host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> list[int]:
    """``count`` distinct ports that are free right now on ``host``.

    All sockets are held open together so the kernel cannot hand out the same port twice. There
    is a small window before the server binds; servers are started right after and a bind failure
    surfaces as a clear startup error.
    """
    avoid_set = set(avoid)
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in avoid_set and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` now. SO_REUSEADDR like the servers themselves (Go
    and uvicorn set it): a port with only TIME_WAIT leftovers of a stopped server counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def spawn(
    cmd: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    markers: Sequence[str] = (),
) -> ProcessRecord:
    """Start ``cmd`` detached, its output appended to ``log_path``.

    ``start_new_session`` puts the server in its own session and process group: a Ctrl-C in the
    terminal that ran ``services up`` does not reach it, and stopping can signal the whole group
    (MLflow's CLI forks the actual web server as a child).
    Secrets go through ``env`` only, never ``cmd``: command lines are world-readable in /proc.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {cmd[0]}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
        )
    create_time = psutil.Process(proc.pid).create_time()
    return ProcessRecord(
        pid=proc.pid,
        create_time=create_time,
        markers=list(markers),
        start_ticks=start_ticks(proc.pid),
    )


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def verify(record: ProcessRecord | None) -> psutil.Process | None:
    """The live process this record describes, or None (gone, zombie, or PID now a stranger)."""
    if record is None or record.pid <= 0:
        return None
    try:
        proc = psutil.Process(record.pid)
        if not _alive(proc):
            return None
        ticks = start_ticks(record.pid) if record.start_ticks is not None else None
        if ticks is not None:
            if ticks != record.start_ticks:
                return None  # same PID, different process: the PID was recycled
        elif record.create_time and abs(proc.create_time() - record.create_time) > 2.0:
            return None
        cmdline = " ".join(proc.cmdline())
        # Right after exec, /proc/<pid>/cmdline reads empty for a moment (the new image's
        # memory is not set up yet; measured: ~1 in 15 spawns here). Retry briefly rather than
        # concluding "not our process".
        for _ in range(20):
            if cmdline:
                break
            time.sleep(0.05)
            cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    if not all(marker in cmdline for marker in record.markers):
        return None
    return proc


def _group_members(leader: psutil.Process) -> list[psutil.Process]:
    """The leader plus its descendants that still sit in its process group."""
    members = [leader]
    try:
        pgid = os.getpgid(leader.pid)
        for child in leader.children(recursive=True):
            try:
                if os.getpgid(child.pid) == pgid:
                    members.append(child)
            except OSError:
                pass
    except (OSError, psutil.Error):
        pass
    return members


def stop(records: Iterable[ProcessRecord | None], timeout_s: float = 30.0) -> dict[int, str]:
    """Stop every *verified* record: SIGTERM, wait up to ``timeout_s``, then SIGKILL.

    All processes are signalled first and waited for together, so stopping several slow servers
    costs the slowest one, not the sum. Returns ``{pid: "terminated" | "killed" | "not running"}``.
    Records that fail verification are never signalled.
    """
    outcome: dict[int, str] = {}
    to_wait: list[psutil.Process] = []
    for record in records:
        if record is None:
            continue
        proc = verify(record)
        if proc is None:
            outcome[record.pid] = "not running"
            continue
        members = _group_members(proc)
        for member in members:
            try:
                member.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        to_wait.extend(members)
        outcome[record.pid] = "terminated"
    if not to_wait:
        return outcome
    _, alive = psutil.wait_procs(to_wait, timeout=timeout_s)
    alive = [p for p in alive if _alive(p)]
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
        if proc.pid in outcome:
            outcome[proc.pid] = "killed"
    if alive:
        psutil.wait_procs(alive, timeout=10)
    return outcome


def log_tail(path: Path, lines: int = 30) -> str:
    """Last lines of a server log, for startup error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
