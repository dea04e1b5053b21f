"""Evaluation: a split's figures and probes, and the baselines ctxlm is compared with (an LSTM, a small GPT-2, Kneser-Ney)."""
