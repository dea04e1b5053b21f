import cProfile, pstats, time
import numpy as np, torch
from bench.common import random_documents
from ctxlm.cstar import cstar_into, document_windows
from ctxlm.model import ContextBlock, ModelConfig
torch.set_num_threads(1)
cfg = ModelConfig(vocab_size=1024, embed_dim=32, context_dim=32)
torch.manual_seed(0); block = ContextBlock(cfg).eval().requires_grad_(False)
emb = torch.randn(1024, 32)
steps = 512
ids, _ = random_documents(256 * steps, np.random.default_rng(1), 1024)
offsets = np.arange(257) * steps
windows = document_windows(ids, offsets, 1)
out = np.empty((len(ids), 1, 32), dtype=np.float32)
cstar_into(block, emb, windows, offsets, out)
t = time.perf_counter(); cstar_into(block, emb, windows, offsets, out); print((time.perf_counter() - t) / steps * 1e3, "ms/step")
pr = cProfile.Profile(); pr.enable()
cstar_into(block, emb, windows, offsets, out)
pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(15)
