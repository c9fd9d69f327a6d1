"""Ahead-of-time compiled model (AOTInductor), cached on disk per model, torch and CPU.

``aot_forward(model, max_batch=...)`` returns a callable with the model's signature
``(x (B, G) float32, element (B,) int64) -> (values, stds, probs, ood_score)`` for any batch size
1..``max_batch``: the model is exported once with a dynamic batch dimension, compiled by
TorchInductor into a shared library of C++ kernels plus a C++ runner (``torch._inductor.
aoti_compile_and_package``), and called through that library's C interface
(:class:`_NativeRunner`; torch's ``aoti_load_package`` only when that interface is unusable).

Why the engine prefers it on the CPU (numbers in docs/BENCHMARKS.md):

* its kernels are TorchInductor's: batch 1 0.8 ms (eager 4.2, ``torch.compile`` 1.5), batch 64
  22 ms (eager 35-40) on one core;
* the forward pass is one foreign call (:class:`_NativeRunner`, ctypes on the package's C
  interface), made without the interpreter lock. The eager model and ``torch.compile``'s Python
  wrapper give the lock back and take it again around every operator: while another thread of
  the engine runs Python (the Kafka client, decoding, the sinks), each take-back waits up to the
  switch interval (batch 64 eager 41 ms -> 2.1 s beside a pure-Python thread). torch's own
  loader for these packages holds the lock for the whole call instead (no such wait, but no
  other thread runs meanwhile); this runner lets both go on;
* one compile covers every batch size (no padding to buckets).

The first start with a given checkpoint, torch version, CPU and thread count compiles for
30-40 s on one core; the package is then kept in ``cache_dir`` (default
``$XDG_CACHE_HOME/spt-stream/aot`` or ``~/.cache/spt-stream/aot``) under a key naming all of
them (:func:`aot_cache_key`), so later starts load it in
milliseconds. The engine does that first compile in the background (:class:`BackgroundCompile`:
a separate, lower-priority process) while the eager model serves, and switches when it is ready
(:func:`aot_load_cached` tells whether it must). Several engines starting at once compile once
(a lock file); a package that fails to load is compiled again. The package is a native library
this process (or its compiler child) wrote itself; nothing received from a network is ever
loaded here.

Needs a C++ compiler at run time (TorchInductor builds the library with it); :func:`aot_available`
says whether one is there, and the engine falls back to the eager model when it is not.

One module: compile, cache, load and serve of the AOT package, including the background compile
process, share the cache's layout and locking.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from spt_stream._version import __version__
from spt_stream.errors import ModelError

__all__ = [
    "BackgroundCompile",
    "aot_available",
    "aot_cache_key",
    "aot_forward",
    "aot_load_cached",
    "default_cache_dir",
]

if TYPE_CHECKING:
    from spt_stream.model.predictor import _Packed

log = logging.getLogger(__name__)

#: torch releases (major, minor) whose AOTInductor C interface and ``torch._C._aoti`` helpers the
#: lock-free runner (:class:`_NativeRunner`) was checked against (tests/pipeline/test_aot.py:
#: its outputs equal torch's own loader's bit for bit). Any other release runs the package
#: through torch's public loader (``torch._inductor.aoti_load_package``).
TESTED_TORCH: tuple[tuple[int, int], ...] = ((2, 13),)


def native_runner_tested() -> bool:
    """Whether the installed torch is a release the ctypes runner was checked against."""
    try:
        major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in TESTED_TORCH


AotForward = Callable[[Tensor, Tensor], tuple[Tensor, ...]]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spt-stream/aot``, else ``~/.cache/spt-stream/aot``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spt-stream" / "aot"


def aot_available() -> str | None:
    """``None`` when AOT compilation can run here, else why not (in words)."""
    names = (os.environ.get("CXX") or "c++", "g++", "clang++")
    if not any(shutil.which(n) for n in names):
        return f"no C++ compiler found ({', '.join(names)} not on PATH)"
    return None


def _cpu_isa() -> str:
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa())
    except Exception:
        return "unknown"


def aot_cache_key(model: nn.Module, max_batch: int, device: torch.device) -> str:
    """Hex digest naming everything a compiled package depends on.

    The weights and buffers (bytes), the architecture, the batch range, the device, torch's and
    this package's versions, Python, the machine, the CPU vector ISA TorchInductor targets (a
    package built for AVX-512 must not be loaded on an AVX2 machine) and torch's thread count
    (set the compute threads before compiling: :class:`~spt_stream.engine.pipeline.ModelRunner`
    does).
    """
    h = hashlib.sha256()
    cfg = getattr(model, "cfg", None)
    meta = {
        "arch": cfg.to_json() if cfg is not None and hasattr(cfg, "to_json") else None,
        "class": type(model).__qualname__,
        "max_batch": int(max_batch),
        "device": device.type,
        "torch": torch.__version__,
        "spt_stream": __version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "isa": _cpu_isa() if device.type == "cpu" else "",
        # TorchInductor sizes its CPU kernels' parallel loops for the thread count at compile
        # time: a package built for 2 threads ran batch 64 in 36 ms on 1 thread, one built for
        # 1 thread in 21.5 ms (same machine, same minute). Compile for the threads that run it.
        "threads": torch.get_num_threads() if device.type == "cpu" else 0,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _NativeRunner:
    """The package's model library called through its C interface with ctypes.

    ctypes drops the interpreter lock for the length of a foreign call, so the forward pass
    runs beside the engine's Python threads instead of stopping them: torch's own loader
    (``aoti_load_package``) holds the lock for the whole call (measured: a pure-Python thread
    beside a batch-64 forward loop kept 18 % of its pace with the loader, 97 % with this).
    Tensors cross the C interface as ``AtenTensorHandle``s made by torch's helpers for this
    interface (inputs are taken over by the library, outputs by torch).
    """

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._handle = ctypes.c_void_p()
        ptr = ctypes.POINTER(ctypes.c_void_p)
        self._run = self._lib.AOTInductorModelContainerRun
        self._run.argtypes = [ctypes.c_void_p, ptr, ctypes.c_size_t, ptr, ctypes.c_size_t,
                              ctypes.c_void_p, ctypes.c_void_p]  # fmt: skip
        self._run.restype = ctypes.c_int32
        self._check(
            self._lib.AOTInductorModelContainerCreateWithDevice(
                ctypes.byref(self._handle), ctypes.c_size_t(1), b"cpu", None
            ),
            "create",
        )
        n = ctypes.c_size_t()
        self._check(
            self._lib.AOTInductorModelContainerGetNumOutputs(self._handle, ctypes.byref(n)),
            "outputs",
        )
        self._n_out = int(n.value)
        self._delete = self._lib.AOTInductorModelContainerDelete

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = ctypes.c_char_p()
            with contextlib.suppress(Exception):
                self._lib.AOTInductorGetLastError(ctypes.byref(msg))
            detail = msg.value.decode(errors="replace") if msg.value else f"error code {rc}"
            raise ModelError(f"compiled model library: {what} failed: {detail}")

    def __call__(self, x: Tensor, element: Tensor) -> tuple[Tensor, ...]:
        caps = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(
            [x.contiguous(), element.contiguous()]
        )
        ins = (ctypes.c_void_p * 2)(*[_capsule_pointer(c, None) for c in caps])
        outs = (ctypes.c_void_p * self._n_out)()
        self._check(self._run(self._handle, ins, 2, outs, self._n_out, None, None), "run")
        return tuple(
            torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs(
                [_capsule_new(o, None, None) for o in outs]
            )
        )

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            with contextlib.suppress(Exception):
                self._delete(handle)
            self._handle = ctypes.c_void_p()


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _library(package: Path) -> Path:
    """The package's model library, unpacked beside it once (``<package>.so``)."""
    lib = package.with_suffix(".so")
    if lib.is_file() and lib.stat().st_mtime >= package.stat().st_mtime:
        return lib
    with zipfile.ZipFile(package) as zf:
        names = [n for n in zf.namelist() if n.endswith(".so")]
        if len(names) != 1:
            raise ModelError(f"expected one model library in the package, found {names}",
                             source=str(package))  # fmt: skip
        data = zf.read(names[0])
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".so", dir=package.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, lib)
    return lib


def _load(path: Path) -> AotForward:
    """The package as a callable: the ctypes runner on a tested torch, else torch's public
    loader (which holds the interpreter lock for the call)."""
    if not native_runner_tested():
        log.info("compiled model: torch's loader (torch %s is not a release the lock-free "
                 "runner was checked against: %s)", torch.__version__, TESTED_TORCH)  # fmt: skip
    else:
        try:
            runner = _NativeRunner(_library(path))
        except (OSError, AttributeError, ModelError, zipfile.BadZipFile) as exc:
            log.info("compiled model: torch's loader instead of the lock-free runner (%s)", exc)
        else:
            return runner
    loaded: Any = torch._inductor.aoti_load_package(str(path))

    def forward(x: Tensor, element: Tensor) -> tuple[Tensor, ...]:
        out: tuple[Tensor, ...] = tuple(loaded(x, element))
        return out

    return forward


def _compile(model: nn.Module, max_batch: int, device: torch.device, dest: Path) -> None:
    n = int(getattr(model, "cfg").n_points)  # noqa: B009 (nn.Module has no typed cfg)
    ex = (
        torch.zeros((2, n), dtype=torch.float32, device=device),
        torch.zeros((2,), dtype=torch.int64, device=device),
    )
    batch = torch.export.Dim("batch", min=1, max=max(2, int(max_batch)))
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own deprecation notices and "no code generation for complex operators" (the
        # band FFT stays an ATen call inside the package): nothing a user can act on.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        exported = torch.export.export(model, ex, dynamic_shapes=({0: batch}, {0: batch}))
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".pt2", dir=dest.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch._inductor.aoti_compile_and_package(exported, package_path=tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)  # readers only ever see a complete package
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def aot_forward(
    model: nn.Module,
    *,
    max_batch: int,
    device: torch.device | str = "cpu",
    cache_dir: Path | str | None = None,
) -> tuple[AotForward, dict[str, Any]]:
    """The model compiled ahead of time (see module doc) and what happened: ``{"path",
    "key", "compiled": bool (False: loaded from the cache), "seconds"}``.

    Raises :class:`~spt_stream.errors.ModelError` when export or compilation fails (the caller
    decides whether to fall back to the eager model).
    """
    dev = torch.device(device)
    model = model.eval()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = aot_cache_key(model, max_batch, dev)
    dest = root / f"spt-{key}.pt2"
    t0 = time.perf_counter()
    compiled = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f"spt-{key}.lock"):
            if dest.is_file():
                try:
                    fwd = _load(dest)
                except Exception as exc:
                    log.warning("cached compiled model %s does not load (%s): compiling again",
                                dest, exc)  # fmt: skip
                    dest.unlink(missing_ok=True)
                    dest.with_suffix(".so").unlink(missing_ok=True)
            if not dest.is_file():
                log.info("compiling the model ahead of time (once per model, torch and CPU; "
                         "~40 s on one core) into %s", dest)  # fmt: skip
                _compile(model, max_batch, dev, dest)
                compiled = True
                fwd = _load(dest)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"ahead-of-time compilation of the model failed: {type(exc).__name__}: {exc}",
            source=str(dest),
        ) from exc
    info = {"path": str(dest), "key": key, "compiled": compiled,
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    return fwd, info


def aot_load_cached(
    model: nn.Module,
    *,
    max_batch: int,
    device: torch.device | str = "cpu",
    cache_dir: Path | str | None = None,
) -> tuple[AotForward, dict[str, Any]] | None:
    """The model's package from the cache, loaded (milliseconds), or ``None`` when the cache does
    not have it (a package that does not load is removed: ``None`` too). Never compiles."""
    dev = torch.device(device)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = aot_cache_key(model.eval(), max_batch, dev)
    dest = root / f"spt-{key}.pt2"
    if not dest.is_file():
        return None
    t0 = time.perf_counter()
    try:
        fwd = _load_locked(dest)
    except Exception as exc:
        log.warning("cached compiled model %s does not load (%s): compiling again", dest, exc)
        with _locked(dest.with_suffix(".lock")):
            dest.unlink(missing_ok=True)
            dest.with_suffix(".so").unlink(missing_ok=True)
        return None
    info = {"path": str(dest), "key": key, "compiled": False,
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    return fwd, info


def _load_locked(dest: Path) -> AotForward:
    with _locked(dest.with_suffix(".lock")):
        if not dest.is_file():
            raise ModelError("compiled model package missing", source=str(dest))
        return _load(dest)


#: The background compiler's command: put the engine's import path first, then compile (see
#: :func:`_child_main`). Its own interpreter: the compile holds the interpreter lock for long
#: stretches (export, lowering), which in a thread would stall the engine serving frames.
_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from spt_stream.model.aot import _child_main; _child_main(sys.argv[2])"
)


def _child_argv(cfg: dict[str, Any]) -> list[str]:
    """The command line of the compiler process for ``cfg`` (see :class:`BackgroundCompile`)."""
    return [sys.executable, "-c", _BOOT, json.dumps(sys.path), json.dumps(cfg)]


def _child_main(arg: str) -> None:
    """The compiler process: load the module the engine saved, check it has the engine's key,
    compile it into the cache under the key's lock (unless another process did meanwhile)."""
    import signal

    cfg = json.loads(arg)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop(): clean up (finally)
    with contextlib.suppress(OSError):
        os.nice(int(cfg["nice"]))
    torch.set_num_threads(int(cfg["threads"]))
    from safetensors.torch import load_file

    from spt_stream.model.network import SPTConfig, SPTInference
    from spt_stream.model.predictor import _Packed

    module_file = Path(cfg["module"])
    try:  # the served model rebuilt from its architecture and tensors: nothing unpickled
        model = _Packed(SPTInference(SPTConfig.from_json(cfg["arch"])))
        model.load_state_dict(load_file(module_file))
    finally:
        module_file.unlink(missing_ok=True)
    dev = torch.device(cfg["device"])
    key = aot_cache_key(model.eval(), int(cfg["max_batch"]), dev)
    if key != cfg["key"]:
        sys.exit(f"the model here has key {key}, the engine's {cfg['key']}: not compiling")
    dest = Path(cfg["dest"])
    t0 = time.perf_counter()
    with _locked(dest.with_suffix(".lock")):
        if not dest.is_file():
            _compile(model, int(cfg["max_batch"]), dev, dest)
    print(f"compiled {dest} in {time.perf_counter() - t0:.1f} s", flush=True)


class BackgroundCompile:
    """Compile ``model``'s package in a separate, lower-priority process while the caller serves
    with something else; then load it and call ``on_done(forward, info, None)`` (from a thread of
    this process), or ``on_done(None, {}, error)``.

    The model (the predictor's packed SPT model) goes to the compiler as its architecture (JSON)
    and a temporary safetensors file of its tensors in the cache folder (this process writes it,
    its child rebuilds the model from both and removes the file; nothing is unpickled). The
    compiler runs at ``nice`` in a session of its own (Ctrl-C is the engine's to handle) and
    writes only the package (under the key's lock, as a foreground compile does) and its log
    ``spt-<key>.log`` beside it. :meth:`stop` (the engine's close, or this process's exit) ends
    it and its compiler subprocesses: the next start compiles again (``spt-stream
    compile-model`` does it once, in the foreground).
    ``info`` is as :func:`aot_forward`'s, with ``compiled: True``, ``background: True`` and
    ``seconds`` from the start of the compile to the package loaded here.
    """

    def __init__(
        self,
        model: _Packed,
        *,
        max_batch: int,
        on_done: Callable[[AotForward | None, dict[str, Any], BaseException | None], None],
        device: torch.device | str = "cpu",
        cache_dir: Path | str | None = None,
        nice: int = 10,
    ) -> None:
        self.device = torch.device(device)
        self.max_batch = int(max_batch)
        self.threads = torch.get_num_threads()  # the caller's (capped) threads: the key's
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        self.key = aot_cache_key(model.eval(), self.max_batch, self.device)
        self.dest = root / f"spt-{self.key}.pt2"
        self.log_path = root / f"spt-{self.key}.log"
        self._on_done = on_done
        from safetensors.torch import save_file

        fd, module_file = tempfile.mkstemp(prefix=".module-", suffix=".safetensors", dir=root)
        os.close(fd)
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, module_file)
        cfg = {"module": module_file, "arch": model.cfg.to_json(), "key": self.key,
               "dest": str(self.dest),
               "max_batch": self.max_batch, "device": self.device.type,
               "threads": self.threads, "nice": nice}  # fmt: skip
        self.started = time.perf_counter()
        try:
            with open(self.log_path, "w") as logf:
                self._proc = subprocess.Popen(
                    _child_argv(cfg),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError:
            Path(module_file).unlink(missing_ok=True)
            raise
        self._thread = threading.Thread(target=self._wait, name="spt-aot-compile", daemon=True)
        self._thread.start()
        _RUNNING.add(self)

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    @property
    def running(self) -> bool:
        """The compiler, or the loading of its package here, has not finished."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until done (``on_done`` called); True when it is."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the compiler and its subprocesses if still running (SIGTERM to its process
        group; SIGKILL after ``timeout`` s)."""
        import signal

        _RUNNING.discard(self)
        if self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout)

    def _wait(self) -> None:
        rc = self._proc.wait()
        _RUNNING.discard(self)
        torch.set_num_threads(self.threads)  # OpenMP's pool size is per thread (see runtime)
        fwd: AotForward | None = None
        info: dict[str, Any] = {}
        error: BaseException | None = None
        if rc != 0:
            try:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
            except OSError:
                tail = []
            error = ModelError(
                f"the background compile exited with status {rc}"
                + (f": {tail[0]}" if tail else ""),
                source=str(self.log_path),
            )
        else:
            try:
                fwd = _load_locked(self.dest)
            except Exception as exc:
                error = exc
            else:
                info = {"path": str(self.dest), "key": self.key, "compiled": True,
                        "background": True,
                        "seconds": round(time.perf_counter() - self.started, 3)}  # fmt: skip
        try:
            self._on_done(fwd, info, error)
        except Exception:
            log.exception("handling the end of the background compile failed")


#: Background compiles still running: stopped at this process's exit (nothing outlives it).
_RUNNING: weakref.WeakSet[BackgroundCompile] = weakref.WeakSet()


@atexit.register
def _stop_running() -> None:
    for job in list(_RUNNING):
        with contextlib.suppress(Exception):
            job.stop()
