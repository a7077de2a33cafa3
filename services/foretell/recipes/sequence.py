"""Session-aware next-item recipe: a SASRec-style causal transformer, or a GRU4Rec-style GRU, in torch.

Each user's items in time order form a sequence; the network reads a prefix and scores the whole
catalogue for the next item (tied input/output item embeddings plus a per-item bias). Training
predicts the next item at every position: full softmax cross-entropy when the catalogue is small,
sampled softmax over shared uniform negatives otherwise. Serving scores from the given history
only, so an event that arrives through PutEvents changes the very next answer without retraining.

Tokens: item index i is token i + 1; 0 pads. Windows are left-padded so the latest item always sits
at the last position, and positions are counted from the right (the last item has position
max_len - 1), which lets a batch be trimmed to its longest history.

Under torchrun (several processes, `training.distributed`) the model trains with DistributedDataParallel:
`batch_size` stays the GLOBAL batch of one optimizer step; every rank draws the same batches and
trains on its slice of each (about batch_size / WORLD_SIZE windows per rank), so epochs, steps, the
learning-rate schedule and the gradient equal those of one process.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recipes.data import by_user
from foretell.recipes.registry import ParamError
from foretell.training import distributed

# Beyond this many items one row of full-softmax logits per position gets too large: sample.
FULL_SOFTMAX_MAX_ITEMS = 50_000
_FORMAT = 1
_WEIGHTS = "weights.pt"
_CONFIG = "config.json"
_SCORE_BATCH = 1024  # users per forward pass when scoring

PARAMS: dict[str, Param] = {
    "architecture": Param(str, "sasrec", "sasrec: causal self-attention; gru: GRU4Rec-style recurrent net.",
                          choices=("sasrec", "gru")),
    "max_len": Param(int, 200, "Latest items of a history the model reads (and training window length).", 2, 4096),
    "dim": Param(int, 64, "Item embedding and hidden size.", 8, 2048),
    "layers": Param(int, 2, "Transformer blocks or GRU layers.", 1, 12),
    "heads": Param(int, 2, "Attention heads (sasrec); must divide dim.", 1, 64),
    "dropout": Param(float, 0.2, "Dropout on embeddings and on attention/feed-forward outputs.", 0.0, 0.9),
    "epochs": Param(int, 50, "Passes over all training windows.", 1, 10_000),
    "batch_size": Param(int, 64, "Windows (of up to max_len positions) per optimizer step.", 1, 65_536),
    "learning_rate": Param(float, 1e-3, "AdamW learning rate (cosine-decayed to 10% over training).", 1e-6, 1.0),
    "weight_decay": Param(float, 0.0, "AdamW decoupled weight decay.", 0.0, 1.0),
    "horizon": Param(int, 1, "Each position learns to predict the next `horizon` items (1: only the next); a "
                     "longer horizon favours what the user consumes soon over the exact next event.", 1, 64),
    "loss": Param(str, "auto", f"full softmax over the catalogue, sampled softmax, or auto (full up to "
                  f"{FULL_SOFTMAX_MAX_ITEMS} items).", choices=("auto", "full", "sampled")),
    "num_negatives": Param(int, 1024, "Uniform negatives shared by a batch (sampled loss).", 1, 1_000_000),
    "seed": Param(int, 0, "Seed of initialisation, batching, dropout and negatives (deterministic on CPU).", 0,
                  2**32 - 1),
    "device": Param(str, "auto", "Training device: auto = cuda when available, else cpu.",
                    choices=("auto", "cpu", "cuda")),
    "mixed_precision": Param(bool, True, "bfloat16 autocast when training on CUDA (ignored on CPU)."),
}  # fmt: skip


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Block(nn.Module):
    """Pre-LayerNorm transformer block; attention through SDPA with an explicit causal+padding mask."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # No dropout on attention weights: on CPU drawing a (B, heads, L, L) mask costs more than the layer.
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, dim)))
        return x + self.drop(self.ff(self.norm2(x)))


class _Net(nn.Module):
    def __init__(
        self, n_items: int, architecture: str, max_len: int, dim: int, layers: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.architecture = architecture
        self.max_len = max_len
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.bias = nn.Parameter(torch.zeros(n_items))
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        if architecture == "sasrec":
            self.positions = nn.Embedding(max_len, dim)
            self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
            nn.init.normal_(self.positions.weight, std=0.02)
        else:
            self.gru = nn.GRU(dim, dim, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        # Small init as in GPT-2: logits through the tied embedding start near uniform.
        nn.init.normal_(self.items.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded tokens -> (B, L, dim) states; state t summarises tokens[:, : t + 1]."""
        x = self.items(tokens)
        length = tokens.shape[1]
        if self.architecture == "sasrec":
            pos = torch.arange(self.max_len - length, self.max_len, device=tokens.device)
            x = self.drop(x + self.positions(pos))
            valid = tokens != 0
            causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
            eye = torch.eye(length, dtype=torch.bool, device=tokens.device)
            # Attend to earlier real items; a padding position attends to itself only (no empty softmax row).
            mask = (causal & (valid[:, None, :] | eye))[:, None]
            for block in self.blocks:
                x = block(x, mask)
        else:
            x, _ = self.gru(self.drop(x))
        return self.norm(x)

    def logits(self, states: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(N, dim) states -> (N, n_items) scores of every item, or (N, len(items)) of `items`."""
        if items is None:
            return states @ self.items.weight[1:].T + self.bias
        return states @ self.items.weight[items + 1].T + self.bias[items]


def _user_sequences(data: Interactions) -> list[np.ndarray]:
    """Each user's item indices in time order (data is sorted by time; a stable sort keeps it)."""
    order = by_user(data)
    counts = np.bincount(data.users, minlength=data.n_users)
    return np.split(data.items[order].astype(np.int64), np.cumsum(counts)[:-1])


def _windows(sequences: list[np.ndarray], max_len: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping training windows, cut from the end of each sequence so the latest context is whole.

    Returns left-padded (W, max_len) input tokens and (W, max_len, horizon) targets: the item indices
    that follow each input position (they may lie past the window's end), -1 where there are none.
    """
    spans = [(u, end) for u, seq in enumerate(sequences) for end in range(len(seq), 1, -max_len)]
    inputs = np.zeros((len(spans), max_len), dtype=np.int64)
    targets = np.full((len(spans), max_len, horizon), -1, dtype=np.int64)
    for r, (u, end) in enumerate(spans):
        seq = sequences[u]
        start = max(1, end - max_len)  # first target index; its input is seq[start - 1]
        width = end - start
        inputs[r, max_len - width :] = seq[start - 1 : end - 1] + 1
        for h in range(horizon):
            ahead = seq[start + h : end + h]
            targets[r, max_len - width : max_len - width + len(ahead), h] = ahead
    return inputs, targets


class Sequence(Recommender):
    """Next-item model over the latest `max_len` items of a history (see module docstring)."""

    name: ClassVar[str] = "sequence"
    params: ClassVar[dict[str, Param]] = PARAMS
    uses_recent_events: ClassVar[bool] = True

    def __init__(self, net: _Net, prior: np.ndarray, config: dict[str, Any]) -> None:
        self.net = net.eval()
        self.n_items = len(prior)
        # Score of an empty history: smoothed log popularity (cold items lowest, never -inf).
        self.prior = prior.astype(np.float32)
        self.config = config
        self.device = next(net.parameters()).device

    # ---- training ---------------------------------------------------------------------------

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> Sequence:
        return cls._train(data, params, progress, None)

    @classmethod
    def warm_start(
        cls,
        previous: Sequence,
        previous_item_ids: np.ndarray,
        data: Interactions,
        params: dict[str, Any],
        progress: Progress = no_progress,
    ) -> Sequence:
        """Trains like `fit`, starting from `previous` (TRAINING_MODE_UPDATE).

        Rows of items whose external id is in both catalogues (`previous_item_ids` is the previous
        artifact's `data.item_ids`) and every other tensor whose name and shape are unchanged are
        copied; new items keep their fresh initialisation. Training then runs all `epochs`.
        """
        old_index = {item: i for i, item in enumerate(previous_item_ids)}
        pairs = [(new, old_index[item]) for new, item in enumerate(data.item_ids) if item in old_index]
        new_rows = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        old_rows = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        old_state = {k: v.detach().cpu() for k, v in previous.net.state_dict().items()}

        def init(net: _Net) -> None:
            with torch.no_grad():
                for key, value in net.state_dict().items():
                    old = old_state.get(key)
                    if key == "items.weight" and old is not None and old.shape[1] == value.shape[1]:
                        value[new_rows + 1] = old[old_rows + 1].to(value)
                    elif key == "bias" and old is not None:
                        value[new_rows] = old[old_rows].to(value)
                    elif old is not None and old.shape == value.shape:
                        value.copy_(old)

        return cls._train(data, params, progress, init)

    @classmethod
    def _train(
        cls,
        data: Interactions,
        params: dict[str, Any],
        progress: Progress,
        init: Callable[[_Net], None] | None,
    ) -> Sequence:
        p = {name: params.get(name, spec.default) for name, spec in PARAMS.items()}
        if p["architecture"] == "sasrec" and p["dim"] % p["heads"]:
            raise ParamError("heads", f"must divide dim ({p['dim']})")
        device = distributed.device(_device(p["device"]))
        n_items = data.n_items
        counts = np.bincount(data.items, minlength=n_items).astype(np.float64)
        prior = np.log((counts + 1.0) / (counts.sum() + n_items))
        sampled = p["loss"] == "sampled" or (p["loss"] == "auto" and n_items > FULL_SOFTMAX_MAX_ITEMS)
        config = {
            "format": _FORMAT,
            "n_items": n_items,
            "params": p,
            "loss": "sampled" if sampled else "full",
        }
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seed dropout without disturbing the caller's RNG
            torch.manual_seed(p["seed"])
            net = _Net(n_items, p["architecture"], p["max_len"], p["dim"], p["layers"], p["heads"], p["dropout"])
            if init is not None:
                init(net)
            net.to(device)
            inputs, targets = _windows(_user_sequences(data), p["max_len"], p["horizon"])
            distributed.check_same_settings(p)
            distributed.check_same("the number of training windows", len(inputs))
            distributed.seed_local_randomness(p["seed"])
            if len(inputs) == 0:
                progress(1.0, "no user has two interactions: nothing to train", epoch=0, loss=0.0)
            else:
                _optimize(net, inputs, targets, p, sampled, device, progress)
            _sink_cold_items(net, counts == 0)
        return cls(net, prior, config)

    # ---- serving ------------------------------------------------------------------------------

    def score(self, users: np.ndarray, histories: Seq[np.ndarray]) -> np.ndarray:
        return self._score(histories, None)

    def score_items(self, users: np.ndarray, histories: Seq[np.ndarray], items: np.ndarray) -> np.ndarray:
        return self._score(histories, np.asarray(items, dtype=np.int64))

    def _score(self, histories: Seq[np.ndarray], items: np.ndarray | None) -> np.ndarray:
        """Scores of every item, or of `items` only (their embedding rows alone are multiplied)."""
        width = self.n_items if items is None else len(items)
        out = np.empty((len(histories), width), dtype=np.float32)
        max_len = self.net.max_len
        clean = [np.asarray(h, dtype=np.int64)[-max_len:] for h in histories]
        # Item indices beyond this model's catalogue (added after training) cannot be read: drop them.
        clean = [h[(h >= 0) & (h < self.n_items)] for h in clean]
        rows = [r for r, h in enumerate(clean) if len(h)]
        out[[r for r, h in enumerate(clean) if not len(h)]] = self.prior if items is None else self.prior[items]
        columns = None if items is None else torch.from_numpy(items).to(self.device)
        for lo in range(0, len(rows), _SCORE_BATCH):
            chunk = rows[lo : lo + _SCORE_BATCH]
            length = max(len(clean[r]) for r in chunk)
            tokens = np.zeros((len(chunk), length), dtype=np.int64)
            for i, r in enumerate(chunk):
                tokens[i, length - len(clean[r]) :] = clean[r] + 1
            with torch.inference_mode():
                states = self.net.encode(torch.from_numpy(tokens).to(self.device))[:, -1]
                out[chunk] = self.net.logits(states, columns).float().cpu().numpy()
        return out

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        state["prior"] = torch.from_numpy(self.prior)
        torch.save(state, directory / _WEIGHTS)
        (directory / _CONFIG).write_text(json.dumps(self.config, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> Sequence:
        """Reads what `save` wrote onto `device` (serving is CPU; "auto" picks cuda when available)."""
        config = json.loads((directory / _CONFIG).read_text())
        if config.get("format") != _FORMAT:
            raise ValueError(f"unsupported sequence model format {config.get('format')!r}")
        p = config["params"]
        state = torch.load(directory / _WEIGHTS, map_location="cpu", weights_only=True)
        prior = state.pop("prior").numpy()
        net = _Net(config["n_items"], p["architecture"], p["max_len"], p["dim"], p["layers"], p["heads"], p["dropout"])
        net.load_state_dict(state)
        return cls(net.to(_device(device)), prior, config)


def _sink_cold_items(net: _Net, cold: np.ndarray) -> None:
    """Items absent from training keep near-random embeddings: give them a zero embedding and a
    bias below every trained item, so they rank last (exploration of new items is serving's job)."""
    if not cold.any() or cold.all():
        return
    rows = torch.from_numpy(np.flatnonzero(cold)).to(net.bias.device)
    with torch.no_grad():
        floor = net.bias[torch.from_numpy(~cold).to(net.bias.device)].min() - 1.0
        net.items.weight[rows + 1] = 0.0
        net.bias[rows] = floor


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    perm = rng.permutation(n)
    for lo in range(0, n, size):
        yield perm[lo : lo + size]


class _Objective(nn.Module):
    """The training loss as a module, so that DDP (which hooks `forward`) can wrap all of it."""

    def __init__(self, net: _Net, sampled: bool) -> None:
        super().__init__()
        self.net = net
        self.sampled = sampled

    def forward(
        self, tokens: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) tokens, (B, L, horizon) targets -> (summed negative log-likelihood, (N, horizon) valid mask)."""
        net = self.net
        states = net.encode(tokens)
        keep = target[:, :, 0] >= 0
        states, target = states[keep], target[keep]  # (N, dim), (N, horizon)
        valid = target >= 0
        safe = target.clamp(min=0)
        if negatives is not None:
            emb = net.items.weight[1:]
            positive = torch.einsum("nd,nhd->nh", states, emb[safe]) + net.bias[safe]
            negative = (states @ emb[negatives].T + net.bias[negatives]).float()
            # A negative that is the target itself is no negative.
            hit = negatives[None, None, :] == safe[:, :, None]
            others = negative[:, None, :].masked_fill(hit, float("-inf"))
            log_p = positive.float() - torch.logsumexp(torch.cat([positive.float()[..., None], others], -1), -1)
        else:
            log_p = torch.log_softmax(net.logits(states).float(), dim=-1).gather(1, safe)
        return -(log_p * valid).sum(), valid


def _count_targets(y: np.ndarray) -> int:
    """Scored (position, step) pairs of windows' targets: what `_Objective` counts as valid."""
    return int(((y[:, :, :1] >= 0) & (y >= 0)).sum())


def _optimize(
    net: _Net,
    inputs: np.ndarray,
    targets: np.ndarray,
    p: dict[str, Any],
    sampled: bool,
    device: torch.device,
    progress: Progress,
) -> None:
    epochs: int = p["epochs"]
    rng = np.random.default_rng(p["seed"])
    generator = torch.Generator(device=device).manual_seed(p["seed"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=p["learning_rate"], weight_decay=p["weight_decay"])
    # Steps of the global batch: the same count on every rank, and the same as in one process.
    steps = epochs * math.ceil(len(inputs) / p["batch_size"])
    # Cosine decay to 10%: late epochs refine instead of bouncing around at the full rate.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    autocast = device.type == "cuda" and p["mixed_precision"]
    n_items = net.bias.shape[0]
    spread = distributed.current().active
    objective = distributed.wrap(_Objective(net, sampled), device)
    start = time.monotonic()
    net.train()
    for epoch in range(1, epochs + 1):
        total, positions = 0.0, 0
        # `batch` is the global batch (batch_size windows, identical on every rank); `idx` this rank's part.
        for batch in _batches(len(inputs), p["batch_size"], rng):
            idx, weight = distributed.shard(batch)
            x, y = inputs[idx], targets[idx]
            first = int((x != 0).any(axis=0).argmax())  # trim columns that are padding in every window
            tokens = torch.from_numpy(x[:, first:]).to(device)
            target = torch.from_numpy(y[:, first:]).to(device)
            # Drawn on every rank from the same generator: all ranks share the negatives, as one batch would.
            negatives = (
                torch.randint(n_items, (p["num_negatives"],), device=device, generator=generator) if sampled else None
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                summed, valid = objective(tokens, target, negatives)
                if spread:
                    loss = summed * weight / distributed.loss_divisor(_count_targets(targets[batch]))
                else:
                    loss = summed / valid.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            count = int(valid.sum())
            if spread:
                total += float(summed.detach()) * weight
                positions += int(count * weight)
            else:
                total += float(loss.detach()) * count
                positions += count
        if spread:
            total, summed_positions = distributed.all_sum([total, float(positions)])
            positions = int(summed_positions)
        mean = total / max(positions, 1)
        progress(epoch / epochs, f"epoch {epoch}/{epochs}", epoch=epoch, loss=mean, seconds=time.monotonic() - start)
    net.eval()
