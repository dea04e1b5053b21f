"""What every stage CLI shares: one-line errors, timing and progress bars. No torch: `prepare` imports it."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import typer
from tqdm import tqdm

from ctxlm.errors import CtxlmError

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="the params file")
DEBUG_OPTION = typer.Option(False, "--debug", help="show the traceback of an error (or set CTXLM_DEBUG=1)")


@contextlib.contextmanager
def stage_run(name: str, debug: bool, timing: bool = True):
    """Time a stage body (a last line, unless not `timing`); a CtxlmError becomes one line on stderr and exit status 1.
    Under torchrun the body runs in each process, joined into one process group (ctxlm.distributed)."""
    start = time.perf_counter()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # read here: this module must not import torch
    where = f"{name} (process {process_rank()} of {os.environ['WORLD_SIZE']})" if launched else name
    try:
        if launched:
            from ctxlm import distributed

            distributed.start()
        yield
        if launched:
            distributed.finish()
    except CtxlmError as err:
        if debug or os.environ.get("CTXLM_DEBUG") == "1":
            raise
        print(f"ctxlm {where}: error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        print(f"ctxlm {where}: interrupted; nothing was marked done", file=sys.stderr)
        raise typer.Exit(130) from None
    except RuntimeError as err:
        from torch.distributed import DistError

        if not launched or not isinstance(err, DistError):
            raise
        # another process died mid-collective; ctxlm.launch names it
        print(f"ctxlm {where}: stopped: another process left ({str(err).splitlines()[0][:200]})", file=sys.stderr)
        raise typer.Exit(1) from None
    finally:
        if launched:
            distributed.stop()
    if timing and os.environ.get("RANK", "0") == "0":
        print(f"ctxlm {name}: done in {time.perf_counter() - start:.1f} s", flush=True)


def elapsed_since(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def make_app() -> typer.Typer:
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def process_rank() -> int:
    """This process's rank among a stage's processes, read without importing torch: torch.distributed's
    once torch is loaded and a group joined, else torchrun's RANK (0 for a single process)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar with rate and ETA; in a log (no terminal) it updates every 30 s instead of live.
    With several processes only the first shows its bars."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("disable", process_rank() != 0)
    kwargs.setdefault("mininterval", 0.5 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, **kwargs)
