"""The GPU path, measured in one run: the default pipeline's stages on CUDA, phase 2's head against
the GPU's own bf16 matrix-product rate, and C* on the GPU against the CPU's fp64 reference.

    python -m bench.gpu                          # on a CUDA machine; about 5 minutes on one H200
    python -m bench.gpu --device cpu --tiny      # the same code on a CPU with tiny params (the tests run this)

Runs prepare -> tokenize -> train_context -> generate_cstar -> train_token -> evaluate as
subprocesses in a temporary folder (the offline default params, or tiny ones), then, in this
process, on the pipeline's own C* and weights:
- phase 2's training rate over `--steps` steps, and the fraction of the ceiling it reaches: the
  head's matrix-product FLOPs per second (forward logits and the gradient of the hidden state,
  4 V d_e per token with E frozen) divided by the rate of a plain product of the same shapes in the
  same precision, timed here;
- the largest |C*_device - C*_cpu,fp64| over the first validation documents (the generator's
  batched recurrence in fp32 on the device; the same in fp64 on the CPU).
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import typer
import yaml

from bench.common import REPO, product_rate, run_stage, synchronize, workdir
from ctxlm.config import Phase2Params
from ctxlm.data.shards import CstarReader, load_token_folder
from ctxlm.generation.cstar import cstar_into, split_windows
from ctxlm.model import TokenModel
from ctxlm.runtime import resolve_precision
from ctxlm.training.phase2 import SplitData, train_token_model
from ctxlm.weights import load_context_blocks

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
STAGES = ["prepare", "tokenize", "train_context", "generate_cstar", "train_token", "evaluate"]
TINY = {"data": {"max_train_tokens": 3000, "max_val_tokens": 1200}, "model": {"context_dim": 16},
        "phase1": {"max_iterations": 3, "batch_tokens": 1000}, "phase2": {"epochs": 2, "patience": 1, "batch_size": 256},
        "evaluate": {"rank_rows": 500}}


def run_stages(folder: Path, device: torch.device) -> dict[str, float]:
    """The pipeline's stages in `folder`, one subprocess each (what `dvc repro` runs); their wall times."""
    seconds = {}
    for stage in STAGES:
        _, seconds[stage] = run_stage(folder, stage, {"CTXLM_DEVICE": str(device), "HF_HUB_OFFLINE": "1"})
        seconds[stage] = round(seconds[stage], 2)
        print(f"{stage}: {seconds[stage]:.1f} s", flush=True)
    return seconds


def phase2_rate(folder: Path, device: torch.device, steps: int) -> dict:
    """Phase 2 on the pipeline's train C* for `steps` steps of the default batch, timed on the device."""
    _, splits, embedding = load_token_folder(folder / "data/tokens")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    phase2 = Phase2Params(**{**params["phase2"], "epochs": 1, "patience": 1})
    phase2 = phase2.model_copy(update={"precision": resolve_precision(phase2.precision, device)})
    block, cfg = load_context_blocks(folder / "data/context")
    train = SplitData(CstarReader(folder / "data/cstar/train"), splits["train"], cfg.num_input_tokens)
    val = SplitData(CstarReader(folder / "data/cstar/val"), splits["val"], cfg.num_input_tokens)
    train.positions = train.positions[: steps * phase2.batch_size]
    val.positions = val.positions[: phase2.batch_size]  # validation kept out of the timing
    torch.manual_seed(0)
    model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True).to(device)
    synchronize(device)
    start = time.perf_counter()
    train_token_model(model, train, val, phase2, device, torch.Generator().manual_seed(0))
    synchronize(device)
    tokens_per_s = len(train) / (time.perf_counter() - start)
    dtype = torch.bfloat16 if phase2.precision == "bf16" else torch.float32
    ceiling = product_rate(phase2.batch_size, cfg.embed_dim, cfg.vocab_size, dtype, device)
    head_flops = 4 * cfg.vocab_size * cfg.embed_dim * tokens_per_s
    return {"phase2_tokens_per_s": round(tokens_per_s), "phase2_precision": phase2.precision,
            "head_tflops": round(head_flops / 1e12, 4), "matmul_tflops_same_shapes": round(ceiling / 1e12, 4),
            "head_fraction_of_ceiling": round(head_flops / ceiling, 4)}


def cstar_error(folder: Path, device: torch.device, tokens: int) -> dict:
    """max |C* on `device` in fp32 - C* on the CPU in fp64| over the first validation documents (about `tokens` tokens)."""
    _, splits, embedding = load_token_folder(folder / "data/tokens")
    val = splits["val"]
    documents = int(np.searchsorted(val.offsets, tokens)) or 1
    offsets = val.offsets[: documents + 1].astype(np.int64)
    block, cfg = load_context_blocks(folder / "data/context")
    windows = split_windows(val, cfg.num_input_tokens)[: offsets[-1]]
    results = {}
    for name, dev, dtype in (("device", device, torch.float32), ("cpu_fp64", torch.device("cpu"), torch.float64)):
        out = np.zeros((int(offsets[-1]), cfg.num_layers, cfg.cstar_dim), dtype=np.float32 if dtype == torch.float32 else np.float64)
        synchronize(device)
        start = time.perf_counter()
        cstar_into(block.to(dev, dtype), embedding.to(dev, dtype), windows.to(dev), offsets, out)
        synchronize(device)
        results[name] = (out, time.perf_counter() - start)
    error = float(np.abs(results["device"][0].astype(np.float64) - results["cpu_fp64"][0]).max())
    return {"cstar_check_tokens": int(offsets[-1]), "cstar_check_documents": documents, "cstar_max_abs_error_vs_cpu_fp64": error}


@app.command()
def main(device: str = typer.Option("cuda", help="cuda | cuda:N | cpu"), tiny: bool = typer.Option(False, help="tiny params (a check of this script)"),
         steps: int = typer.Option(200, help="phase 2 steps timed in this process"), check_tokens: int = 20_000) -> None:
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench.gpu: no CUDA device here (torch.cuda.is_available() is False); --device cpu --tiny checks the script on a CPU")
    folder = workdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in (TINY if tiny else {}).items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"bench.gpu on {name}, torch {torch.__version__}, in {folder}", flush=True)
    seconds = run_stages(folder, target)
    metrics = {stage: json.loads((folder / f"metrics/{stage}.json").read_text()) for stage in ("train_token", "generate_cstar", "eval")}
    figures = {"device": name, "torch": torch.__version__, "tiny": tiny, "stage_seconds": seconds, "pipeline_seconds": round(sum(seconds.values()), 1),
               "stage_phase2_tokens_per_s": metrics["train_token"]["tokens_per_s"], "stage_precision": metrics["train_token"]["precision"],
               "cstar_train_tokens_per_s": metrics["generate_cstar"]["train_tokens_per_s"], "test_ppl": metrics["eval"]["test_ppl"]}
    figures |= phase2_rate(folder, target, steps)
    figures |= cstar_error(folder, target, check_tokens)
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    app()
