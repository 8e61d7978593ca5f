"""The fault suite's `detkeeper` runs, in processes forked from one that has already imported
TensorFlow, Keras and detkeeper.

Every run of the fault suite must be a process of its own: it is SIGKILLed at a chosen moment, or
its file size limited (fault_driver.py). Started fresh, each spends about 4 of its 15 CPU seconds
importing TensorFlow, Keras and detkeeper before it reads, builds, traces and trains. A zygote (as
Android's, or a pre-fork server) imports them once, then forks a child per command; the child arms
the fault and runs `detkeeper.cli.main.main` exactly as ``python fault_driver.py MOMENT ARGS``
does, in the environment and folder it is given, its stdout and stderr in files. Forking is safe
because the zygote runs no TensorFlow op: TensorFlow makes its thread pools and runtime at the first
op, in the child. A fault-suite training run took 11.2 CPU s forked against 15.4 s started fresh
(2 idle cores), 10.4 against 14.5 s of wall time.

``run(moment, args, env, timeout)`` takes an idle zygote (or starts one: the kill chains run a few
commands at a time) and returns what ``subprocess.run`` would. Run as a script, this file is the
zygote: one JSON request a line on stdin; it answers ``{"pid": ...}`` when the child is started and
``{"returncode": ...}`` when it has ended (negative: the signal that ended it), and ends with its
stdin.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
_idle: list[subprocess.Popen] = []
_all: list[subprocess.Popen] = []
_lock = threading.Lock()


def run(moment: str, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``python fault_driver.py MOMENT ARGS`` with `env`, in a child forked from a zygote."""
    zygote = _take()
    try:
        with tempfile.TemporaryDirectory(prefix="forked-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"moment": moment, "args": list(args), "env": env, "cwd": os.getcwd(),
                       "stdout": str(out), "stderr": str(err)}
            zygote.stdin.write(json.dumps(request) + "\n")
            zygote.stdin.flush()
            pid = _answer(zygote, None)["pid"]
            try:
                returncode = _answer(zygote, timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                _answer(zygote, None)
                raise subprocess.TimeoutExpired([moment, *args], timeout) from None
            completed = subprocess.CompletedProcess([moment, *args], returncode, out.read_text(errors="replace"),
                                                    err.read_text(errors="replace"))
    except BaseException:
        _discard(zygote)
        raise
    with _lock:
        _idle.append(zygote)
    return completed


def _take() -> subprocess.Popen:
    with _lock:
        if _idle:
            return _idle.pop()
    # Its own output (TensorFlow's start-up lines) goes to a file, not into whichever test's capture
    # was on when it started; the file is named when the zygote fails.
    log = tempfile.NamedTemporaryFile("w", prefix="fault-zygote-", suffix=".log", delete=False)
    zygote = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=log, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    zygote.log = log.name
    log.close()
    with _lock:
        _all.append(zygote)
    if zygote.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the fault suite's zygote did not start (exit {zygote.wait()}; see {zygote.log})")
    return zygote


def _answer(zygote: subprocess.Popen, timeout: float | None) -> dict:
    if timeout is not None and not select.select([zygote.stdout], [], [], timeout)[0]:
        raise TimeoutError
    line = zygote.stdout.readline()
    if not line:
        raise RuntimeError(f"the fault suite's zygote ended (exit {zygote.wait()}; see {zygote.log})")
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


def _serve() -> None:
    """The zygote: import once, then fork a child per request and report how it ended."""
    sys.path.insert(0, str(HERE))
    import keras  # noqa: F401  (imported here, before any fork: the point of the zygote)
    import tensorflow  # noqa: F401

    import detkeeper.cli.main  # noqa: F401
    import detkeeper.evaluation.evaluate  # noqa: F401
    import detkeeper.export.exporter  # noqa: F401
    import detkeeper.training.trainer  # noqa: F401
    import fault_driver

    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child never returns to this loop, whatever happens in it
            code = 70
            try:
                code = _child(request, fault_driver)
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def _child(request: dict, fault_driver) -> int:
    """What ``python fault_driver.py MOMENT ARGS`` does, in the request's environment and folder."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [str(HERE / "fault_driver.py"), request["moment"], *request["args"]]
    try:
        code = fault_driver.run(request["moment"], request["args"])
    except SystemExit as exit:
        code = exit.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - printed as Python would, then the exit status it gives
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code or 0


if __name__ == "__main__":
    _serve()
