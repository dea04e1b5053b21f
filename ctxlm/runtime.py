"""Device, seeding and precision helpers shared by the training code."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import random

import numpy as np
import torch

from ctxlm import distributed


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def settle_vector_math() -> None:
    """Make torch's first MKL vector-math call (exp, log, tanh, ...) on this thread alone.

    MKL chooses its vector-math code path on first use. When that first use is a large elementwise
    op, torch's threads each call MKL on their share at once, and they race: in 13 of 100 processes
    on an AMX Xeon, one thread's half of an exp came out of another path (relative error 1e-5), so
    the same seed and params gave test PPLs 5e-8 apart. One tiny call, here at import, settles it."""
    torch.log(torch.ones(1))


settle_vector_math()


def release_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim; elsewhere a no-op).

    Readers free and reallocate tens of MB of C* per load; glibc keeps such freed blocks resident,
    so without this the resident size creeps up with the number of loads, i.e. with the corpus."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def pick_device() -> torch.device:
    """CUDA when available (under torchrun, this process's GPU: cuda:LOCAL_RANK); CTXLM_DEVICE=cpu|cuda|cuda:N overrides."""
    name = os.environ.get("CTXLM_DEVICE") or (f"cuda:{distributed.local_rank()}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The device as a run's metrics record it ("cuda: NVIDIA H200", "cpu: <the CPU's model name>"),
    so that figures made on different machines are never mixed unknowingly."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    return f"cpu: {platform.machine()}"


def configure_device(runtime, device: torch.device, modules: list[torch.nn.Module] = ()) -> None:
    """Apply the params' runtime section: TF32 matrix products on CUDA (runtime.tf32), and
    torch.compile of `modules` in place, keeping their parameter names (runtime.compile)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
        torch.backends.cudnn.allow_tf32 = runtime.tf32
    if runtime.compile:
        for module in modules:
            module.compile()


def adam(parameters, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam stepping all parameters at once: fused kernels on CUDA; on a CPU the foreach form, whose
    steps equal the per-parameter loop's bit for bit (the fused CPU kernel rounds differently)."""
    if device.type == "cuda":
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    return torch.optim.Adam(parameters, lr=lr, foreach=True)


def clip_gradients(parameters, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ over all gradients at once (foreach; equal to the per-parameter loop bit for bit)."""
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where bf16 matrix products run natively (a CUDA device that has them, a CPU
    with AVX512-BF16 or AMX), else 'fp32': without them a CPU emulates bf16, measured 4.5x slower
    than fp32 on an AVX2-only CPU. 'fp32' and 'bf16' stay as they are."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"


def autocast(precision: str, device: torch.device):
    """bf16 autocast for the matrix work (fp32 weights, optimizer state and losses stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def one_thread():
    """Run a stretch of small CPU kernels on one thread: waking the pool's other threads for a few
    hundred numbers costs more than it saves (on a loaded 2-core VM a (1, 512) GELU took 38 us on
    one thread and 546 us on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
