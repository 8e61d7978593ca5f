"""Python scripts run in processes forked from one that has already imported what they need.

Many tests must run a script in a process of its own: the fault suite's `detkeeper` runs are
SIGKILLed at a chosen moment or their file size limited (faults/fault_driver.py), and export
verification runs the SavedModel in a process that has never imported detkeeper
(detkeeper/export/standalone_check.py). Started fresh, each spends about 4 CPU seconds importing
TensorFlow. A zygote (as Android's, or a pre-fork server) imports once, then forks a child per
request; the child runs the script as ``python SCRIPT ARGS`` would (``runpy``, ``__main__``), in
the environment and folder it is given, its stdout and stderr in files. Forking is safe because the
zygote runs no TensorFlow op: TensorFlow makes its thread pools and runtime at the first op, in the
child. A fault-suite training run took 11.2 CPU s forked against 15.4 s started fresh.

Two kinds of zygote:

- ``detkeeper``: TensorFlow, Keras and detkeeper's commands imported, tests/faults on the path;
- ``tensorflow``: started as ``python -I`` with the environment export verification gives its
  fresh process, TensorFlow alone imported; detkeeper never is, so a child is what
  standalone_check.py's own process would be.

``run(kind, argv, env, timeout)`` takes an idle zygote of that kind (or starts one: the kill
chains run a few commands at a time) and returns what ``subprocess.run`` would; ``start(kind, argv,
env, stdout, stderr)`` returns at once with a handle used as a ``subprocess.Popen`` (the
distributed tests' workers, a trainer another one races). Run as a script,
this file is the zygote: one JSON request a line on stdin; it answers ``{"pid": ...}`` when the
child is started and ``{"returncode": ..., "cpu_seconds": ...}`` when it has ended (negative: the
signal that ended it), and ends with its stdin. The children's CPU seconds are summed in
:data:`forked_cpu_seconds`: getrusage in the test process cannot see them, as the zygote, not the
test, reaps its children (benchmarks/suite_cpu.py adds them to each test's).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

TESTS = Path(__file__).resolve().parent
KINDS = ("detkeeper", "tensorflow")
#: What export verification passes to its fresh process (detkeeper.export.verify), and so the
#: ``tensorflow`` zygote's own environment: TensorFlow reads some of it when it is imported.
VERIFICATION_ENVIRONMENT = ("PATH", "HOME", "LANG", "TMPDIR")
_idle: dict[str, list[subprocess.Popen]] = {kind: [] for kind in KINDS}
_all: list[subprocess.Popen] = []
_lock = threading.Lock()
#: CPU seconds of every zygote child that has ended and been waited for, in this process.
forked_cpu_seconds = 0.0


def run(kind: str, argv: list[str], env: dict[str, str], timeout: float,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    """``python ARGV`` (a script and its arguments) with `env` in `cwd`, forked from a `kind` zygote;
    returns what ``subprocess.run`` would."""
    with tempfile.TemporaryDirectory(prefix="forked-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        process = start(kind, argv, env, out, err, cwd)
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(argv, returncode, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))


def start(kind: str, argv: list[str], env: dict[str, str], stdout: Path, stderr: Path,
          cwd: str | None = None) -> "Forked":
    """``python ARGV`` started as :func:`run` runs it, its output written to the files `stdout` and
    `stderr`; returns at once with a handle used as a ``subprocess.Popen``."""
    zygote = _take(kind)
    try:
        request = {"argv": [str(arg) for arg in argv], "env": env, "cwd": cwd or os.getcwd(),
                   "stdout": str(stdout), "stderr": str(stderr)}
        zygote.stdin.write(json.dumps(request).encode() + b"\n")
        zygote.stdin.flush()
        pid = _answer(zygote, None)["pid"]
    except BaseException:
        _discard(zygote)
        raise
    return Forked(kind, zygote, pid, list(argv))


class Forked:
    """A script running in a child of a zygote, used as a ``subprocess.Popen`` is: ``pid``,
    ``returncode``, ``poll()``, ``wait(timeout)``, ``send_signal()``, ``kill()``. Its zygote serves
    no other request until the child has ended and been waited for."""

    def __init__(self, kind: str, zygote: subprocess.Popen, pid: int, args: list[str]) -> None:
        self.kind, self.args, self.pid = kind, args, pid
        self.returncode: int | None = None
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None:
            self._collect(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._collect(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signal_number: int) -> None:
        if self.returncode is None:  # not reaped yet, so the pid is still this child's
            os.kill(self.pid, signal_number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _collect(self, timeout: float | None) -> bool:
        """Whether the child ended within `timeout` (its return code then set, the zygote idle again)."""
        global forked_cpu_seconds
        try:
            answer = _answer(self._zygote, timeout)
        except TimeoutError:
            return False
        except BaseException:
            _discard(self._zygote)
            raise
        self.returncode = answer["returncode"]
        with _lock:
            forked_cpu_seconds += answer["cpu_seconds"]
            _idle[self.kind].append(self._zygote)
        return True


def _take(kind: str) -> subprocess.Popen:
    with _lock:
        if _idle[kind]:
            return _idle[kind].pop()
    # Its own output (TensorFlow's start-up lines) goes to a file, not into whichever test's capture
    # was on when it started; the file is named when the zygote fails.
    log = tempfile.NamedTemporaryFile("w", prefix=f"{kind}-zygote-", suffix=".log", delete=False)
    if kind == "tensorflow":
        command = [sys.executable, "-I", __file__, kind]
        environment = {key: os.environ[key] for key in VERIFICATION_ENVIRONMENT if key in os.environ}
    else:
        command, environment = [sys.executable, __file__, kind], dict(os.environ)
    # Unbuffered bytes: a line read never pulls the next answer into a buffer select() cannot see.
    zygote = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0,
                              env={**environment, "TF_CPP_MIN_LOG_LEVEL": "3"})
    zygote.log = log.name
    log.close()
    with _lock:
        _all.append(zygote)
    if zygote.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"the {kind} zygote did not start (exit {zygote.wait()}; see {zygote.log})")
    return zygote


def _answer(zygote: subprocess.Popen, timeout: float | None) -> dict:
    if timeout is not None and not select.select([zygote.stdout], [], [], timeout)[0]:
        raise TimeoutError
    line = zygote.stdout.readline()
    if not line:
        raise RuntimeError(f"a zygote ended (exit {zygote.wait()}; see {zygote.log})")
    return json.loads(line)


def _discard(zygote: subprocess.Popen) -> None:
    zygote.kill()
    zygote.wait()


@atexit.register
def _close_all() -> None:
    for zygote in _all:
        if zygote.poll() is None:
            zygote.stdin.close()  # the zygote's loop ends with its stdin
            zygote.wait(timeout=30)
        Path(zygote.log).unlink(missing_ok=True)


def _preload(kind: str) -> None:
    """Import what the children of a `kind` zygote need, before any fork: the point of the zygote.
    The garbage collector is off meanwhile and what was imported is frozen, as CPython's ``gc.freeze``
    advises before forking (and as detkeeper's commands import TensorFlow, cli/console.py): the
    children's collections never walk it, nor write to the pages they share with the zygote."""
    gc.disable()
    import tensorflow  # noqa: F401

    if kind == "detkeeper":
        sys.path.insert(0, str(TESTS / "faults"))
        import keras  # noqa: F401

        import detkeeper.cli.main  # noqa: F401
        import detkeeper.evaluation.evaluate  # noqa: F401
        import detkeeper.export.exporter  # noqa: F401
        import detkeeper.training.trainer  # noqa: F401
        import fault_driver  # noqa: F401
    gc.freeze()
    gc.enable()


def _serve(kind: str) -> None:
    """The zygote: import once, then fork a child per request and report how it ended."""
    _preload(kind)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child never returns to this loop, whatever happens in it
            code = 70
            try:
                code = _child(request)
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status, usage = os.wait4(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                          "cpu_seconds": usage.ru_utime + usage.ru_stime}), flush=True)


def _child(request: dict) -> int:
    """What ``python ARGV`` does, in the request's environment and folder, up to its exit handlers."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # as in a fresh process: TMPDIR is read from this environment
    sys.argv = list(request["argv"])
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - printed as Python would, then the exit status it gives
        import traceback

        traceback.print_exc()
        code = 1
    # Then what Python does at exit, which os._exit skips: the exit handlers (AutoGraph's removes the
    # files it generated in the temporary folder), then the streams.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code or 0


if __name__ == "__main__":
    _serve(sys.argv[1])
