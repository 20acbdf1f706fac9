"""Imports with CUDA forbidden, for the fork server's preload (bench.run.warm), which must never initialise CUDA:
a child of a process that did cannot use it ("Cannot re-initialize CUDA in forked subprocess").

Some libraries ask for the device while they are imported (bitsandbytes, which peft imports when it is installed,
asks for the device's capability). On a CUDA build the imports are first tried in a throwaway process, so the
server never imports, even in part, what asks: half an import cannot be undone cleanly (a package re-imported in
the cell does not get back the submodules left behind as attributes, and torch operators registered by a
module's import cannot be registered twice). The server then imports the rest with CUDA still forbidden, and
unloads anything that asks after all.

    python -m bench.run.preload MODULE...   # the throwaway process: prints what asks for CUDA, as JSON
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys

import torch

# torch's entry points that initialise CUDA or mark a process unable to fork with it: the lazy
# initialiser, and the device count, which CUDA builds compute by initialising the driver.
_CUDA_ENTRY_POINTS = ("_cuda_init", "_cuda_getDeviceCount")


class CudaTouched(RuntimeError):
    """An import asked for CUDA while the fork server was preloading."""


@contextlib.contextmanager
def cuda_forbidden(touched: list[str], callers: set[str]):
    """Within: every CUDA entry point raises CudaTouched and is logged in `touched` with the module that
    called it (even when the importing library catches the exception and carries on with CUDA marked
    unavailable), and the modules with code running at that moment (frames on the stack) join `callers`.

    Only entry points the torch build has are replaced: on a CPU build `torch.cuda.is_available()`
    answers from their absence, and adding them would change that answer.
    """
    def refuse(name: str):
        def call(*args, **kwargs):
            running = []
            frame = sys._getframe(1)
            while frame is not None:
                running.append(frame.f_globals.get("__name__", ""))
                frame = frame.f_back
            asker = next((m for m in running if m != "torch" and not m.startswith("torch.")), "?")
            touched.append(f"{name} from {asker}")
            callers.update(running)
            raise CudaTouched(f"torch.{name} called while preloading")
        return call

    saved = {name: getattr(torch._C, name) for name in _CUDA_ENTRY_POINTS if hasattr(torch._C, name)}
    saved_lazy = torch.cuda._lazy_init
    for name in saved:
        setattr(torch._C, name, refuse(name))
    torch.cuda._lazy_init = refuse("cuda._lazy_init")
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(torch._C, name, original)
        torch.cuda._lazy_init = saved_lazy


def preload(modules: tuple[str, ...]) -> dict[str, str]:
    """Import `modules` with CUDA forbidden; returns the modules left out, with the reason.

    When an import asks for CUDA, the modules it brought in whose code was running at that moment
    leave sys.modules, so the cell imports them afresh: a library that caught the refusal may have
    cached "no CUDA", and one that did not failed to import (Python has dropped it already). The
    modules it imported before, which never saw the refusal, stay. A module that is not installed is
    an optional extra the cell reports if it needs it.
    """
    skipped: dict[str, str] = {}
    for name in modules:
        before = set(sys.modules)
        touched: list[str] = []
        callers: set[str] = set()
        try:
            with cuda_forbidden(touched, callers):
                importlib.import_module(name)
        except ImportError as e:
            skipped[name] = f"not installed ({e})"
        except CudaTouched:
            pass
        if touched:
            for new in (set(sys.modules) - before) & callers:
                del sys.modules[new]
            skipped[name] = f"touches CUDA on import ({', '.join(sorted(set(touched)))})"
    return skipped


def cuda_build() -> bool:
    """Whether this torch has CUDA entry points (a CPU build answers "no CUDA" without asking anything)."""
    return any(hasattr(torch._C, name) for name in _CUDA_ENTRY_POINTS)


def asking_in_a_child(modules: tuple[str, ...]) -> dict[str, str] | None:
    """The modules whose import asks for CUDA, with the reason, found by importing them in order in a
    throwaway process; None if that process failed (then the caller finds out in-process)."""
    try:
        out = subprocess.run([sys.executable, "-m", "bench.run.preload", *modules], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def preload_for_server(modules: tuple[str, ...]) -> dict[str, str]:
    """preload(), leaving out on a CUDA build what asks for CUDA in a throwaway process (the cells import it)."""
    asking = asking_in_a_child(modules) if cuda_build() else {}
    if asking is None:
        return preload(modules)
    touching = {name: why for name, why in asking.items() if "touches CUDA" in why}
    return {**touching, **preload(tuple(m for m in modules if m not in touching))}


if __name__ == "__main__":
    print(json.dumps(preload(tuple(sys.argv[1:]))))
