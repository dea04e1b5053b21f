"""Interpolated Kneser–Ney trigram model over token ids: the count-based baseline (no torch).

Position i of a document predicts t_{i+1} from (t_{i-1}, t_i), like ctxlm's TokenBlock predicts it
from (C*_i, x_i); the history before a document's first token is a start symbol BOS = V. Levels:

    p1(w)     = max(N(.w) - D1, 0) / N(..) + D1 T1 / N(..) / V        (continuation unigram + uniform)
    p2(w|v)   = max(N(.vw) - D2, 0) / N(.v.) + D2 T(v.) / N(.v.) p1(w)
    p3(w|u,v) = max(c(uvw) - D3, 0) / c(uv.) + D3 T(uv.) / c(uv.) p2(w|v)

c: counts; N(.vw): distinct u before (v, w); N(.w): distinct v before w; T: distinct followers;
a level whose history was never seen passes its lower level through. Discounts D = n1 / (n1 + 2 n2)
per level (n1, n2: how many n-grams of that level have count 1 and 2).
"""

from __future__ import annotations

import numpy as np

from ctxlm.data.files import doc_starts, has_next


class _Table:
    """Sorted int64 keys -> values, looked up many at a time (missing keys give 0)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray | None = None):
        self.keys, counts = np.unique(keys, return_counts=True)
        self.values = counts if values is None else values

    @classmethod
    def summed(cls, keys: np.ndarray, weights: np.ndarray) -> _Table:
        unique, inverse = np.unique(keys, return_inverse=True)
        return cls(unique, np.bincount(inverse, weights=weights, minlength=len(unique)))

    def __getitem__(self, keys: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            return np.zeros(len(keys))
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.values[at], 0).astype(np.float64)


def _discount(counts: np.ndarray) -> float:
    n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
    return float(n1 / (n1 + 2 * n2)) if n1 + n2 > 0 else 0.5


def trigrams(ids: np.ndarray, offsets: np.ndarray, bos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, w, position of v) of every prediction inside the documents: w = t_{i+1}, v = t_i,
    u = t_{i-1} or BOS at a document's first token."""
    ids = np.asarray(ids, dtype=np.int64)
    i = np.flatnonzero(has_next(offsets, len(ids)))
    u = np.where(doc_starts(offsets, len(ids))[i], bos, ids[np.maximum(i - 1, 0)])
    return u, ids[i], ids[i + 1], i


class KneserNeyTrigram:
    def __init__(self, vocab_size: int):
        self.V = vocab_size
        self.B = vocab_size + 1  # key base: ids and BOS

    def fit(self, ids: np.ndarray, offsets: np.ndarray) -> KneserNeyTrigram:
        u, v, w, _ = trigrams(ids, offsets, bos=self.V)
        B = self.B
        tri = _Table((u * B + v) * B + w)  # c(uvw)
        tu, tv, tw = tri.keys // (B * B), tri.keys // B % B, tri.keys % B
        self.c3 = tri
        self.c_uv = _Table.summed(tu * B + tv, tri.values)  # c(uv.)
        self.t_uv = _Table(tu * B + tv)  # T(uv.)
        self.n_vw = _Table(tv * B + tw)  # N(.vw): distinct u
        bv, bw = self.n_vw.keys // B, self.n_vw.keys % B
        self.n_v = _Table.summed(bv, self.n_vw.values)  # N(.v.)
        self.t_v = _Table(bv)  # T(v.)
        self.n_w = _Table(bw)  # N(.w): distinct v
        self.n_all = float(len(self.n_vw.keys))  # N(..)
        self.t_w = float(len(self.n_w.keys))  # T1
        self.d3, self.d2, self.d1 = _discount(tri.values), _discount(self.n_vw.values), _discount(self.n_w.values)
        self.followers = {}  # v -> the words seen after v, for the argmax
        order = np.argsort(bv, kind="stable")
        for v_id, words in zip(*_groups(bv[order], bw[order])):
            self.followers[int(v_id)] = words
        self.top_unigram = int(self.n_w.keys[np.argmax(self.n_w.values)])
        return self

    def prob(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """p3(w | u, v) for arrays of equal length."""
        B = self.B
        p1 = np.maximum(self.n_w[w] - self.d1, 0) / self.n_all + self.d1 * self.t_w / self.n_all / self.V
        n_v = self.n_v[v]
        seen_v = n_v > 0
        safe_v = np.where(seen_v, n_v, 1)
        p2 = np.where(seen_v, np.maximum(self.n_vw[v * B + w] - self.d2, 0) / safe_v + self.d2 * self.t_v[v] / safe_v * p1, p1)
        c_uv = self.c_uv[u * B + v]
        seen_uv = c_uv > 0
        safe_uv = np.where(seen_uv, c_uv, 1)
        c = self.c3[(u * B + v) * B + w]
        return np.where(seen_uv, np.maximum(c - self.d3, 0) / safe_uv + self.d3 * self.t_uv[u * B + v] / safe_uv * p2, p2)

    def argmax(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The most likely next id for each (u, v): among the words seen after v and the best
        continuation unigram (every other word scores below the latter)."""
        best = np.empty(len(u), dtype=np.int64)
        keys = u.astype(np.int64) * self.B + v
        order = np.argsort(keys, kind="stable")
        for key, rows in zip(*_groups(keys[order], order)):
            cu, cv = divmod(int(key), self.B)
            candidates = np.append(self.followers.get(cv, np.zeros(0, dtype=np.int64)), self.top_unigram)
            p = self.prob(np.full(len(candidates), cu), np.full(len(candidates), cv), candidates)
            best[rows] = candidates[np.argmax(p)]
        return best

    def evaluate(self, ids: np.ndarray, offsets: np.ndarray) -> tuple[float, float]:
        """Mean cross-entropy (nats) and argmax accuracy over every prediction of a split."""
        u, v, w, _ = trigrams(ids, offsets, bos=self.V)
        loss = float(-np.log(self.prob(u, v, w)).mean())
        accuracy = float((self.argmax(u, v) == w).mean())
        return loss, accuracy


def _groups(sorted_keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Runs of equal keys in `sorted_keys` -> (the keys, the matching slices of `values`)."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64), []
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    return sorted_keys[np.concatenate([[0], cuts])], np.split(values, cuts)
