"""Sequence recipe on synthetic chains: learns order, reacts to new events, round-trips, handles cold items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from foretell.recipes.base import Interactions
from foretell.recipes.registry import ParamError, parse_params, recipe_class
from foretell.recipes.sequence import Sequence

GROUPS, CHAIN, COLD = 6, 8, 4  # items g*CHAIN .. g*CHAIN+7 form a cycle; the last COLD items never occur
N_ITEMS = GROUPS * CHAIN + COLD
COLD_ITEMS = np.arange(GROUPS * CHAIN, N_ITEMS)
SMALL: dict[str, Any] = {"max_len": 20, "dim": 32, "layers": 1, "heads": 2, "dropout": 0.1, "epochs": 12, "batch_size": 32}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def successor(item: int) -> int:
    group, pos = divmod(item, CHAIN)
    return group * CHAIN + (pos + 1) % CHAIN


def chains(n_users: int = 300, length: int = 24, seed: int = 0) -> tuple[Interactions, list[np.ndarray]]:
    """Users walk a group's cycle (85%) or jump to a random item of another group (15%)."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(n_users):
        item = int(rng.integers(GROUPS * CHAIN))
        seq = [item]
        for _ in range(length - 1):
            if rng.random() < 0.85:
                item = successor(item)
            else:
                group = (item // CHAIN + int(rng.integers(1, GROUPS))) % GROUPS
                item = group * CHAIN + int(rng.integers(CHAIN))
            seq.append(item)
        sequences.append(np.array(seq))
    users = np.repeat(np.arange(n_users), length)
    steps = np.tile(np.arange(length), n_users)
    order = np.lexsort((users, steps))  # time order, users interleaved as in a real log
    data = Interactions(
        user_ids=np.array([f"u{u}" for u in range(n_users)], dtype=object),
        item_ids=np.array([f"i{i}" for i in range(N_ITEMS)], dtype=object),
        users=users[order].astype(np.int32),
        items=np.concatenate(sequences)[order].astype(np.int32),
        timestamps=(1_700_000_000 + steps[order]).astype(np.int64),
        event_types=np.zeros(n_users * length, dtype=np.int16),
    )
    return data, sequences


def train_part(data: Interactions) -> Interactions:
    """Everything but each user's last event (the held-out next item)."""
    last_step = data.timestamps.max()
    keep = data.timestamps < last_step
    return Interactions(
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        users=data.users[keep],
        items=data.items[keep],
        timestamps=data.timestamps[keep],
        event_types=data.event_types[keep],
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str, dict[str, float]]] = []

    def __call__(self, fraction: float, message: str = "", **counters: float) -> None:
        self.calls.append((fraction, message, counters))


def params(**overrides: Any) -> dict[str, Any]:
    raw = {k: str(v) for k, v in {**SMALL, "device": "cpu", **overrides}.items()}
    return parse_params("sequence", raw)


@pytest.fixture(scope="module")
def trained() -> tuple[Sequence, list[np.ndarray], Recorder]:
    torch.set_num_threads(2)
    data, sequences = chains()
    recorder = Recorder()
    model = Sequence.fit(train_part(data), params(), recorder)
    return model, sequences, recorder


def hit_rate(model: Sequence, sequences: list[np.ndarray], k: int = 10) -> float:
    scores = model.score(np.arange(len(sequences)), [s[:-1] for s in sequences])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([s[-1] in row for s, row in zip(sequences, top, strict=True)]))


def test_learns_the_planted_order_far_better_than_popularity(trained: tuple[Sequence, list, Recorder]) -> None:
    model, sequences, _ = trained
    counts = np.bincount(np.concatenate([s[:-1] for s in sequences]), minlength=N_ITEMS)
    popular = set(np.argsort(-counts)[:10].tolist())
    popularity_hits = float(np.mean([s[-1] in popular for s in sequences]))
    assert hit_rate(model, sequences) > 0.8
    assert hit_rate(model, sequences) > popularity_hits + 0.5


def test_a_new_event_moves_the_top_answer_to_its_successor(trained: tuple[Sequence, list, Recorder]) -> None:
    model, sequences, _ = trained
    top1, cases = 0, 0
    for user in range(10):
        history = sequences[user]
        before = model.score(np.array([user]), [history])[0]
        # One new event in each group the user is not in: the next answer follows it, without retraining.
        news = [g * CHAIN + 3 for g in range(GROUPS) if g != history[-1] // CHAIN]
        after = model.score(np.full(len(news), user), [np.append(history, n) for n in news])
        for new, row in zip(news, after, strict=True):
            target = successor(new)
            assert (row > row[target]).sum() < 3 <= (before > before[target]).sum()
            top1 += int(row.argmax() == target)
            cases += 1
    assert top1 >= 0.9 * cases


def test_batch_scores_do_not_depend_on_the_other_histories(trained: tuple[Sequence, list, Recorder]) -> None:
    model, sequences, _ = trained
    histories = [sequences[1][:3], sequences[2], np.array([], dtype=np.int64), sequences[3][:10]]
    together = model.score(np.arange(4), histories)
    alone = np.vstack([model.score(np.array([i]), [h]) for i, h in enumerate(histories)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_gives_identical_scores(trained: tuple[Sequence, list, Recorder], tmp_path: Path) -> None:
    model, sequences, _ = trained
    model.save(tmp_path)
    loaded = recipe_class("sequence").load(tmp_path)
    histories = [s[:-1] for s in sequences[:50]] + [np.array([], dtype=np.int64)]
    users = np.arange(len(histories))
    np.testing.assert_array_equal(loaded.score(users, histories), model.score(users, histories))
    assert loaded.uses_recent_events


def test_cold_items_get_finite_low_scores(trained: tuple[Sequence, list, Recorder]) -> None:
    model, sequences, _ = trained
    histories = [s[:-1] for s in sequences[:50]] + [np.array([], dtype=np.int64)]
    scores = model.score(np.arange(len(histories)), histories)
    assert scores.dtype == np.float32 and scores.shape == (len(histories), N_ITEMS)
    assert np.isfinite(scores).all()
    warm = np.setdiff1d(np.arange(N_ITEMS), COLD_ITEMS)
    assert (scores[:, COLD_ITEMS].max(axis=1) < np.median(scores[:, warm], axis=1)).all()
    # An empty history gets the popularity prior: cold items last.
    assert scores[-1, COLD_ITEMS].max() < scores[-1, warm].min()


def test_progress_is_reported_every_epoch_and_loss_falls(trained: tuple[Sequence, list, Recorder]) -> None:
    _, _, recorder = trained
    epochs = SMALL["epochs"]
    assert [c[2]["epoch"] for c in recorder.calls] == list(range(1, epochs + 1))
    assert [c[1] for c in recorder.calls][-1] == f"epoch {epochs}/{epochs}"
    assert recorder.calls[-1][0] == 1.0
    losses = [c[2]["loss"] for c in recorder.calls]
    assert losses[-1] < 0.6 * losses[0]


def test_training_is_deterministic_given_the_seed() -> None:
    data, sequences = chains(n_users=60, length=12)
    a, b = (Sequence.fit(data, params(epochs=2)) for _ in range(2))
    c = Sequence.fit(data, params(epochs=2, seed=1))
    histories = [s for s in sequences[:10]]
    users = np.arange(10)
    np.testing.assert_array_equal(a.score(users, histories), b.score(users, histories))
    assert not np.array_equal(a.score(users, histories), c.score(users, histories))


@pytest.mark.parametrize("overrides", [{"architecture": "gru"}, {"loss": "sampled", "num_negatives": 16}])
def test_gru_and_sampled_softmax_learn_too(overrides: dict[str, Any]) -> None:
    data, sequences = chains(n_users=200)
    model = Sequence.fit(train_part(data), params(epochs=10, **overrides))
    assert model.config["loss"] == overrides.get("loss", "full")
    assert hit_rate(model, sequences) > 0.6


def test_warm_start_copies_items_by_id(trained: tuple[Sequence, list, Recorder]) -> None:
    model, _, _ = trained
    data, sequences = chains(n_users=40, length=12, seed=3)
    # The new catalogue lists items in reverse order and adds one: rows follow ids, not indices.
    reorder = np.arange(N_ITEMS)[::-1].copy()
    shifted = Interactions(
        user_ids=data.user_ids,
        item_ids=np.append(data.item_ids[reorder], "new"),
        users=data.users,
        items=(N_ITEMS - 1 - data.items).astype(np.int32),
        timestamps=data.timestamps,
        event_types=data.event_types,
    )
    zero_lr = params(learning_rate=1e-6, epochs=1, dropout=0.0)
    updated = Sequence.warm_start(model, data.item_ids, shifted, zero_lr)
    old = model.net.items.weight.detach()[1:]
    new = updated.net.items.weight.detach()[1:]
    np.testing.assert_allclose(new[:N_ITEMS].numpy(), old[reorder].numpy(), atol=1e-4)
    # Same predictions as before, translated to the new indices.
    history = sequences[0]
    before = model.score(np.array([0]), [history])[0]
    after = updated.score(np.array([0]), [N_ITEMS - 1 - history])[0]
    assert int(after.argmax()) == N_ITEMS - 1 - int(before.argmax())


def test_heads_must_divide_dim() -> None:
    data, _ = chains(n_users=5, length=4)
    with pytest.raises(ParamError) as err:
        Sequence.fit(data, params(dim=30, heads=4))
    assert err.value.name == "heads"
