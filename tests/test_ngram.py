import numpy as np
import pytest

from ctxlm.evaluation.ngram import KneserNeyTrigram, trigrams


def test_kneser_ney_by_hand():
    """One document 0 1 0 1 2 over V = 3 (BOS = 3). Trigram types (3,0,1) (0,1,0) (1,0,1) (0,1,2),
    all seen once: D3 = 1. N(.vw): (0,1) 2, (1,0) 1, (1,2) 1: D2 = 2 / (2 + 2) = 0.5. N(.w) = 1 for
    each w: D1 = 1, so p1 = 1/3 everywhere.
      p2(1|1) = 0 + 0.5 * 2/2 * 1/3 = 1/6;  p2(2|1) = p2(0|1) = 0.5/2 + 1/6 = 5/12
      p3(w|0,1) = max(c - 1, 0)/2 + 1 * 2/2 * p2(w|1) = p2(w|1)
      p2(1|0) = 1.5/2 + 0.5 * 1/2 * 1/3 = 5/6;  p3(1|3,0) = 0 + 1 * 1/1 * 5/6 = 5/6"""
    model = KneserNeyTrigram(vocab_size=3).fit(np.array([0, 1, 0, 1, 2]), np.array([0, 5]))
    assert (model.d3, model.d2, model.d1) == (1.0, 0.5, 1.0)
    p = model.prob(np.array([0, 0, 0, 3, 2]), np.array([1, 1, 1, 0, 2]), np.array([1, 2, 0, 1, 1]))
    np.testing.assert_allclose(p, [1 / 6, 5 / 12, 5 / 12, 5 / 6, 1 / 3])
    assert model.argmax(np.array([3, 2]), np.array([0, 2])).tolist() == [1, model.top_unigram]


def test_kneser_ney_by_hand_with_a_history_seen_once():
    """Documents 0 1 0 1 2 and 2 0 (V = 3, BOS = 3). Trigram types, each once: D3 = 1. N(.vw): (0,1) 2,
    (1,0) 1, (1,2) 1, (2,0) 1: D2 = 3 / (3 + 2) = 0.6. N(.w): 0 <- {1, 2} 2, 1 <- {0} 1, 2 <- {1} 1:
    D1 = 2 / (2 + 2) = 0.5, p1(w) = max(N(.w) - 0.5, 0)/4 + 0.5 * 3/4 * 1/3: p1 = (1/2, 1/4, 1/4).
    History 2 is seen once, before 0: p2(0|2) = 0.4/1 + 0.6 * 1/1 * 1/2 = 0.7, p2(1|2) = p2(2|2) = 0.6 * 1/4 = 0.15;
    (0, 2) was never seen, so p3(w|0,2) = p2(w|2); p3(0|3,2) = 0 + 1 * 1/1 * p2(0|2) = 0.7."""
    model = KneserNeyTrigram(vocab_size=3).fit(np.array([0, 1, 0, 1, 2, 2, 0]), np.array([0, 5, 7]))
    assert (model.d3, model.d2, model.d1) == (1.0, 0.6, 0.5)
    p = model.prob(np.array([0, 0, 0, 3, 0]), np.array([2, 2, 2, 2, 3]), np.array([0, 1, 2, 0, 0]))
    np.testing.assert_allclose(p, [0.7, 0.15, 0.15, 0.7, 0.5])  # history 3 (BOS) is never a bigram's first word: p1


def test_every_context_is_a_distribution_and_the_argmax_is_its_mode():
    rng = np.random.default_rng(0)
    V = 40
    ids = rng.zipf(1.5, 3000) % V
    offsets = np.array([0, 700, 1900, 3000])
    model = KneserNeyTrigram(V).fit(ids, offsets)
    u, v, _, _ = trigrams(ids, offsets, bos=V)
    contexts = np.unique(np.stack([u, v], 1), axis=0)[:50].tolist() + [[V, 39], [5, 6]]
    words = np.arange(V)
    for cu, cv in contexts:
        p = model.prob(np.full(V, cu), np.full(V, cv), words)
        assert p.sum() == pytest.approx(1.0, abs=1e-9) and (p > 0).all()
        assert p[model.argmax(np.array([cu]), np.array([cv]))[0]] == pytest.approx(p.max())


def test_trigram_positions_stay_inside_documents():
    u, v, w, i = trigrams(np.array([5, 6, 7, 8, 9]), np.array([0, 2, 5]), bos=10)
    assert list(zip(u, v, w, i)) == [(10, 5, 6, 0), (10, 7, 8, 2), (7, 8, 9, 3)]


def test_beats_an_add_one_unigram_on_held_out_text():
    rng = np.random.default_rng(1)
    phrases = [rng.integers(0, 200, rng.integers(3, 8)) for _ in range(40)]  # a small "language"
    ids = np.concatenate([phrases[j] for j in rng.integers(0, 40, 1500)])
    train, val = ids[:6000], ids[6000:]
    model = KneserNeyTrigram(200).fit(train, np.array([0, len(train)]))
    loss, accuracy = model.evaluate(val, np.array([0, len(val)]))
    counts = np.bincount(train, minlength=200) + 1.0
    unigram_loss = float(-np.log(counts[val[1:]] / counts.sum()).mean())
    assert loss < 0.6 * unigram_loss and accuracy > 0.3


def test_evaluate_is_the_mean_negative_log_probability_and_the_argmax_hit_rate():
    """The hand example above, scored on a held-out document 0 1 2: predictions (BOS,0)->1 and (0,1)->2
    with p3 = 5/6 and 5/12; the argmax after (BOS,0) is 1 (a hit), after (0,1) it is 2 or 0 (p 5/12 each)."""
    model = KneserNeyTrigram(vocab_size=3).fit(np.array([0, 1, 0, 1, 2]), np.array([0, 5]))
    loss, accuracy = model.evaluate(np.array([0, 1, 2]), np.array([0, 3]))
    assert loss == pytest.approx(-(np.log(5 / 6) + np.log(5 / 12)) / 2)
    assert accuracy in (0.5, 1.0) and accuracy == np.mean(model.argmax(np.array([3, 0]), np.array([0, 1])) == [1, 2])
    assert model.argmax(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)).shape == (0,)  # a split without predictions


def test_groups_are_the_runs_of_equal_keys():
    from ctxlm.evaluation.ngram import _groups

    keys, rows = _groups(np.array([1, 1, 4, 7, 7, 7]), np.arange(6))
    assert keys.tolist() == [1, 4, 7] and [r.tolist() for r in rows] == [[0, 1], [2], [3, 4, 5]]
    keys, rows = _groups(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert keys.shape == (0,) and rows == []
