"""
One run per `output_dir`: a lock file that names its holder, so that a second run started into the same folder is
refused instead of overwriting the first one's checkpoints and final model.

The lock is `output_dir/fipo_run.lock`, a JSON file with the holder's host, process id, Slurm job id (and restart
count), start time and a heartbeat (the file's modification time, touched every [`HEARTBEAT_SECONDS`]). Only the main
process of a run (global rank 0) takes it; the other processes of the run, on this node or others, follow its
decision. A lock is stale, and taken over with a warning, when:

- its holder is this very process (an earlier `fipo-trl train` call in the same Python process), or
- its holder ran on this host and its process is gone, or
- its holder is an earlier attempt of this Slurm job (same `SLURM_JOB_ID`: Slurm ended that attempt before
  requeueing the job), or
- its heartbeat is older than [`STALE_SECONDS`] (a holder on another node that died without removing it), or
- it is not a lock: empty or half-written [`WRITE_SECONDS`] after its creation (its writer was killed mid-write).

Otherwise the run is refused in one line naming the holder and both ways out.
"""

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UsageError


logger = logging.getLogger(__name__)

LOCK_NAME = "fipo_run.lock"
HEARTBEAT_SECONDS = 30  # how often the holder touches the file
STALE_SECONDS = 300  # 10 missed heartbeats: a holder on another host is dead (or its file system is stuck)
WRITE_SECONDS = 5  # a lock file still empty this long after its creation was left by a writer killed mid-write


def is_main_process() -> bool:
    """Global rank 0, read from the launcher's environment (torchrun, accelerate launch) before any process group."""
    return int(os.environ.get("RANK", "0")) == 0


def this_holder() -> dict:
    """Who this process is, as the lock records it."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stale_reason(holder: dict, heartbeat_age: float) -> str | None:
    """Why the lock of `holder` (last touched `heartbeat_age` seconds ago) no longer holds, or `None` if it does."""
    me = this_holder()
    if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
        return "held by this process"
    if holder.get("host") == me["host"] and not _pid_alive(holder.get("pid", -1)):
        return f"process {holder.get('pid')} on this host is gone"
    if me["slurm_job_id"] and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return f"an earlier attempt of Slurm job {me['slurm_job_id']}, ended by Slurm before the requeue"
    if heartbeat_age > STALE_SECONDS:
        return f"no heartbeat for {heartbeat_age:.0f} s (> {STALE_SECONDS} s)"
    return None


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"host {holder.get('host')}, pid {holder.get('pid')}{job}, started {holder.get('started')}"


class OutputDirLock:
    """
    The lock of one run on its `output_dir`; use as a context manager around the run.

    On the main process, `__enter__` takes the lock (or raises [`UsageError`] naming the live holder) and starts the
    heartbeat; `__exit__` stops it and removes the file. The other processes of the run (torchrun ranks, other nodes)
    raise the same error when the main process does, and otherwise go on without touching the file.

    Args:
        output_dir (`str` or `os.PathLike`):
            The run's `output_dir` (it must exist: [`~fipo_trl.run.preflight.check_output_dir`] creates it).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self._stop = threading.Event()
        self._thread = None
        self._held = False

    def __enter__(self):
        refusal = None
        if is_main_process():
            try:
                self.acquire()
            except UsageError as error:
                refusal = str(error)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every process of the run, on every node, refuses or goes on with its main process
            from accelerate.utils import broadcast_object_list

            refusal = broadcast_object_list([refusal], from_process=0)[0]
        if refusal is not None:
            raise UsageError(refusal)
        return self

    def __exit__(self, *exc_info):
        self.release()

    def read(self) -> tuple[dict | None, float] | None:
        """
        `(holder, seconds since its last heartbeat)`, with `holder` `None` for a file that is not a lock (empty or
        half-written); `None` when there is no lock file.
        """
        try:
            age = time.time() - self.path.stat().st_mtime
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None if not self.path.exists() else (None, age)
        return (holder if isinstance(holder, dict) else None), age

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = self.read()
                if found is None:
                    continue  # removed between our attempt and the read
                holder, age = found
                if holder is None and age < WRITE_SECONDS:  # another run between its create and its write
                    time.sleep(0.1)
                    continue
                if holder is None:
                    logger.warning(
                        "Taking over the lock file %s: it is not a lock (empty or half-written, its writer was killed "
                        "while writing it %.0f s ago)",
                        self.path,
                        age,
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                reason = stale_reason(holder, age)
                if reason is None:
                    raise UsageError(
                        f"output_dir {self.path.parent} is in use by another run ({describe(holder)}; heartbeat "
                        f"{age:.0f} s ago): wait for it to end or choose another output_dir; if that run is dead, "
                        f"delete {self.path}"
                    ) from None
                if reason != "held by this process":
                    logger.warning("Taking over the stale lock %s (%s): %s", self.path, describe(holder), reason)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as file:
                json.dump(this_holder(), file, indent=1)
            break
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="fipo-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # deleted by hand: the run goes on without a lock
                return

    def release(self) -> None:
        if not self._held:
            return
        self._stop.set()
        self._thread.join()
        found = self.read()
        holder = found[0] if found is not None else None
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self._held = False
