"""`subprocess.run`/`Popen` for `python -m prune_cli.<tool> ...` without paying for the imports.

A `prune-run` subprocess spends about 4.5 s of CPU importing torch, Hydra and prune_cli before
it reads its first argument; the suite starts a few hundred of them. Here each such command runs
in a real, separate process forked from a clean server process that has already imported those
modules (multiprocessing's forkserver: it imports them and nothing else, and never runs any of
our code). The child then does what `python -m prune_cli.<tool> ARGS` does: it takes the given
working directory, environment (the whole of it, replaced), stdin/stdout/stderr (real pipes or
files, passed as file descriptors), `sys.path` (the directory first, then a fresh interpreter's
path) and `sys.argv`, and calls the module's `main()`, which is all that its `__main__` block
and its console script do; its exit status is the
interpreter's (SystemExit's code, 1 after a traceback, killed by SIGINT on an uncaught ^C) and
the atexit functions run. Signals (SIGKILL, SIGSTOP, SIGINT) go to its own pid.

Any other command (another program, `python -c`, a console script) goes to `subprocess` itself,
and so does everything when PRUNE_CLI_TESTS_FORK=0. A few tests keep running the installed
console script through `subprocess` on purpose, so that the entry points stay covered.
"""

from __future__ import annotations

import atexit
import importlib
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import traceback
from multiprocessing import reduction
from pathlib import Path

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
TimeoutExpired = subprocess.TimeoutExpired
CompletedProcess = subprocess.CompletedProcess


def _preload() -> list[str]:
    """What the server imports once: every prune_cli module, and the heavy libraries that runs
    import lazily (torch._dynamo, which torch's optimizers import when first built; TensorBoard's
    protobufs; matplotlib). Imported here, they cost a run nothing; a missing one is skipped."""
    import prune_cli

    root = Path(prune_cli.__file__).parent
    ours = sorted(
        ".".join(("prune_cli", *f.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for f in root.rglob("*.py")
        if f.name != "__main__.py"
    )
    heavy = [
        "torch._dynamo",
        "torch.utils.tensorboard",
        "matplotlib.pyplot",
        "submitit",
    ]
    return [*ours, *heavy]


ENABLED = os.environ.get("PRUNE_CLI_TESTS_FORK", "1") != "0"

_context = None
_fresh_path: list[str] | None = None
_lock = threading.Lock()


def _server():
    global _context, _fresh_path
    with _lock:
        if _context is None:
            # sys.path of a fresh interpreter started the way a test would start one
            probe = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"]
            _fresh_path = json.loads(subprocess.check_output(probe, text=True))
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([*_preload(), __name__])
            _context = ctx
    return _context


def _module(argv) -> str | None:
    """`prune_cli.x` when ``argv`` is `python -m prune_cli.x ...` with this interpreter."""
    if not ENABLED or isinstance(argv, (str, bytes)) or len(argv) < 3:
        return None
    exe, flag, module = (str(a) for a in argv[:3])
    if flag != "-m" or not module.startswith("prune_cli"):
        return None
    if os.path.realpath(exe) != os.path.realpath(sys.executable):
        return None
    return module


class _Fd:
    """A file descriptor that travels to the child with the process object (SCM_RIGHTS)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return _inherited, (reduction.DupFd(self.fd),)


def _inherited(dup) -> int:
    return dup.detach()


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _child(module, args, cwd, env, fds, fresh_path) -> None:
    """In the forked process: become `python -m MODULE ARGS` in ``cwd`` with ``env``."""
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", buffering=0, closefd=False),  # noqa: SIM115
        errors="backslashreplace",
        line_buffering=True,
    )
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = [cwd, *fresh_path[1:]]
    entry = importlib.import_module(module)  # (already imported by the server)
    sys.argv = [entry.__file__, *args]
    code = 0
    try:
        raise SystemExit(entry.main())  # what `python -m` (the module's __main__ block) and
        # the console script run
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - the interpreter prints it and exits 1
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # the interpreter's exit: join the threads, then atexit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    if code < 0:  # an uncaught ^C: the interpreter ends itself by the signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _fd_for(spec, default_fd: int, mode: str, text: bool):
    """(fd for the child, parent's file object or None, fd to close in the parent or None)."""
    if spec is None:
        return default_fd, None, None
    if spec == DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        return fd, None, fd
    if spec == PIPE:
        r, w = os.pipe()
        if mode == "r":  # the child reads (stdin): parent writes
            return r, open(w, "w" if text else "wb"), r  # noqa: SIM115
        return w, open(r, "r" if text else "rb"), w  # noqa: SIM115
    if isinstance(spec, int):
        return spec, None, None
    return spec.fileno(), None, None


class Popen:
    """`subprocess.Popen`'s interface for a `python -m prune_cli...` command (see the module)."""

    def __new__(cls, args, **kwargs):
        if _module(args) is None:
            return subprocess.Popen(args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        args,
        *,
        cwd=None,
        env=None,
        stdin=None,
        stdout=None,
        stderr=None,
        text=False,
        universal_newlines=None,
        encoding=None,
        **unsupported,
    ) -> None:
        if unsupported:
            raise TypeError(f"procs.Popen does not take {sorted(unsupported)}")
        self.args = args
        self.returncode = None
        text = bool(text or universal_newlines or encoding)
        ctx = _server()
        fin, self.stdin, c0 = _fd_for(stdin if stdin is not None else DEVNULL, 0, "r", text)
        fout, self.stdout, c1 = _fd_for(stdout, 1, "w", text)
        if stderr == STDOUT:
            ferr, self.stderr, c2 = fout, None, None
        else:
            ferr, self.stderr, c2 = _fd_for(stderr, 2, "w", text)
        self._process = ctx.Process(
            target=_child,
            args=(
                _module(args),
                [str(a) for a in args[3:]],
                os.fspath(cwd) if cwd is not None else os.getcwd(),
                dict(env if env is not None else os.environ),
                [_Fd(fin), _Fd(fout), _Fd(ferr)],
                _fresh_path,
            ),
        )
        try:
            self._process.start()
        finally:
            for fd in {c0, c1, c2} - {None}:
                os.close(fd)
        self.pid = self._process.pid

    def poll(self):
        if self.returncode is None and self._process.exitcode is not None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self.poll() is None:
            raise TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, input=None, timeout=None):  # noqa: A002 - subprocess's name
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
            self.stdin = None
        results: dict[str, object] = {}

        def drain(name, stream):
            results[name] = stream.read()
            stream.close()

        readers = [
            threading.Thread(target=drain, args=(name, stream), daemon=True)
            for name, stream in (("out", self.stdout), ("err", self.stderr))
            if stream is not None and not stream.closed
        ]
        for t in readers:
            t.start()
        for t in readers:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        return results.get("out"), results.get("err")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None and not stream.closed:
                stream.close()
        self.wait()


def run(args, *, input=None, capture_output=False, timeout=None, check=False, **kwargs):  # noqa: A002
    """`subprocess.run` through `Popen` above."""
    if _module(args) is None:
        return subprocess.run(
            args, input=input, capture_output=capture_output, timeout=timeout, check=check, **kwargs
        )
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = PIPE
    if input is not None:
        kwargs["stdin"] = PIPE
    with Popen(args, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args, out, err)
    return CompletedProcess(args, proc.returncode, out, err)


__all__ = ["PIPE", "DEVNULL", "STDOUT", "Popen", "run", "TimeoutExpired", "CompletedProcess"]
