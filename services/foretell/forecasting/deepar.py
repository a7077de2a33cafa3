"""DeepAR-style global probabilistic forecaster (Salinas et al., 2020) in torch.

One autoregressive LSTM learns from every series at once. At each step it reads the previous
values of the series (lags 1 and season_length, divided by the series' scale), the known covariates
of that step, a season-phase embedding, item-metadata embeddings and the log of the series' scale,
and outputs the parameters of a likelihood for the value of that step. Training maximises that
likelihood on random windows of context_length + horizon steps (teacher forcing); forecasting
encodes the latest context and then draws `num_samples` paths, feeding each sampled value back as
the next step's lag; the mean and quantiles are taken over the paths.

Scale: 1 + mean |value| over the context (DeepAR's "+1" keeps all-zero series finite). A series
with no context (a cold-start item, or a training window before a series' first context value)
takes the median scale of the training series sharing its first category code, else of all of
them, so that training teaches the network exactly the cold-start situation that serving meets.
Windows that reach back before a series' start are left-padded with zero inputs and zero
observed-masks; padding is never scored.

Under torchrun (several processes, `training.distributed`) the model trains with DistributedDataParallel:
`batch_size` stays the GLOBAL number of windows per optimizer step; every rank draws the same random
windows (same seeded RNG) and builds and trains on its slice of each batch (about batch_size / WORLD_SIZE
windows per rank), so the windows, the steps per epoch and the gradient equal those of one process.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foretell.forecasting.base import DEFAULT_QUANTILES, Forecast
from foretell.training import distributed

LIKELIHOODS: tuple[str, ...] = ("student-t", "gaussian", "negative-binomial")
_FORMAT = 1
_WEIGHTS = "weights.pt"
_CONFIG = "config.json"
_MAX_DEFAULT_CONTEXT = 512  # a default context beyond this only slows the LSTM; lag-m inputs carry the season
_ROWS_PER_PASS = 16_384  # series x samples per forward pass when forecasting (bounds memory)
_MIN_SIGMA = 1e-4
_CLIP_GRAD = 10.0  # GluonTS DeepAR's default: the occasional heavy-tailed window would blow up the LSTM


@dataclass(frozen=True)
class GlobalSeries:
    """One series of a global model: its history, known covariates and item metadata."""

    target: np.ndarray  # (T,) float64, oldest first, no NaN; empty for a cold-start item
    related: np.ndarray | None = None  # (T + horizon, k) known covariates, extending `horizon` steps past target
    static: np.ndarray | None = None  # (c,) int64 category codes, 0 = unknown
    start_phase: int = 0  # season position of target[0] (of the first forecast step when target is empty)


def _embedding_dim(cardinality: int) -> int:
    return max(1, min(16, (cardinality + 1) // 2))


class _Net(nn.Module):
    """LSTM over [lags, lag masks, covariates, log scale, phase embedding, static embeddings]."""

    def __init__(
        self,
        n_real: int,
        season_length: int,
        cardinalities: Sequence[int],
        hidden_size: int,
        num_layers: int,
        dropout: float,
        n_params: int,
    ) -> None:
        super().__init__()
        self.phase = nn.Embedding(season_length, _embedding_dim(season_length)) if season_length > 1 else None
        self.statics = nn.ModuleList(nn.Embedding(c, _embedding_dim(c)) for c in cardinalities)
        width = n_real + (_embedding_dim(season_length) if season_length > 1 else 0)
        width += sum(_embedding_dim(c) for c in cardinalities)
        self.rnn = nn.LSTM(width, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, n_params)

    def forward(
        self,
        real: torch.Tensor,
        phase: torch.Tensor,
        static: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(B, L, n_real), (B, L) phases, (B, c) codes -> (B, L, n_params) raw likelihood parameters."""
        parts = [real]
        if self.phase is not None:
            parts.append(self.phase(phase))
        length = real.shape[1]
        parts.extend(emb(static[:, j])[:, None, :].expand(-1, length, -1) for j, emb in enumerate(self.statics))
        out, state = self.rnn(torch.cat(parts, dim=-1), state)
        return self.head(out), state


# ---------------------------------------------------------------- likelihoods
# Gaussian and Student-t model value / scale; the negative binomial models raw counts with the mean
# and dispersion scaled as in the DeepAR paper (mu * scale, alpha / sqrt(scale)).


def _n_params(likelihood: str) -> int:
    return 3 if likelihood == "student-t" else 2


def _parameters(raw: torch.Tensor, scale: torch.Tensor, likelihood: str) -> list[torch.Tensor]:
    """Constrained parameters from raw outputs: (mu, sigma) or (mu, sigma, nu) of value / scale for
    gaussian and student-t; (mu, alpha) of the counts themselves for negative-binomial."""
    if likelihood == "negative-binomial":
        return [F.softplus(raw[..., 0]) * scale + 1e-6, F.softplus(raw[..., 1]) / scale.sqrt() + 1e-6]
    loc_scale = [raw[..., 0], F.softplus(raw[..., 1]) + _MIN_SIGMA]
    return loc_scale if likelihood == "gaussian" else [*loc_scale, 2.0 + F.softplus(raw[..., 2])]


def _nll(raw: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Negative log-likelihood of `y` (original units) per position; scale is (B, 1)."""
    theta = _parameters(raw, scale, likelihood)
    if likelihood == "negative-binomial":
        mu, alpha = theta
        r = 1.0 / alpha
        log_p = (
            torch.lgamma(y + r)
            - torch.lgamma(y + 1.0)
            - torch.lgamma(r)
            - r * torch.log1p(alpha * mu)
            + y * (torch.log(alpha * mu) - torch.log1p(alpha * mu))
        )
        return -log_p
    if likelihood == "gaussian":
        return -torch.distributions.Normal(theta[0], theta[1]).log_prob(y / scale)
    return -torch.distributions.StudentT(theta[2], theta[0], theta[1]).log_prob(y / scale)


def _sample(raw: torch.Tensor, scale: torch.Tensor, likelihood: str, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of (N, n_params) raw parameters, in original units; scale is (N,).

    Drawn with numpy's Generator, not torch's global RNG: concurrent predict calls in one server
    process cannot disturb each other's streams, and paths do not depend on the device's RNG."""
    theta = [t.double().cpu().numpy() for t in _parameters(raw, scale, likelihood)]
    if likelihood == "negative-binomial":
        mu, alpha = theta
        return rng.poisson(rng.gamma(1.0 / alpha, alpha * mu)).astype(np.float64)  # gamma-Poisson mixture
    sc = scale.double().cpu().numpy()
    if likelihood == "gaussian":
        return rng.normal(theta[0], theta[1]) * sc
    return (theta[0] + theta[1] * rng.standard_t(theta[2])) * sc


# ---------------------------------------------------------------- validation


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    inside = low <= value < high if high_open else low < value <= high
    if not inside:
        interval = f"[{low}, {high})" if high_open else f"({low}, {high}]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device: {exc}") from exc


def _levels(quantiles: tuple[float, ...]) -> np.ndarray:
    levels = np.asarray(quantiles, dtype=np.float64).reshape(-1)
    if not np.all((levels > 0) & (levels < 1)):  # also rejects NaN
        raise ValueError(f"quantile levels must be strictly inside (0, 1), got {list(quantiles)}")
    return np.unique(levels)  # sorted, as Forecast.levels promises


@dataclass(frozen=True)
class _Layout:
    """What every series of one call must agree on: covariate width k and static width c."""

    k: int
    c: int


def _validate(series: list[GlobalSeries], horizon: int, cardinalities: Sequence[int]) -> _Layout:
    """Checks every series; the messages name the series index."""
    if not isinstance(series, list | tuple) or not series:
        raise ValueError("series must be a non-empty list of GlobalSeries")
    layout: _Layout | None = None
    for i, s in enumerate(series):
        if not isinstance(s, GlobalSeries):
            raise ValueError(f"series[{i}] is a {type(s).__name__}, not a GlobalSeries")
        z = np.asarray(s.target)
        if z.ndim != 1 or not np.issubdtype(z.dtype, np.number):
            raise ValueError(f"series[{i}].target must be a 1-D numeric array, got shape {z.shape} ({z.dtype})")
        if not np.all(np.isfinite(z)):
            raise ValueError(f"series[{i}].target contains NaN or infinite values")
        k = 0
        if s.related is not None:
            rel = np.asarray(s.related)
            if rel.ndim != 2 or rel.shape[0] != len(z) + horizon:
                raise ValueError(
                    f"series[{i}].related must have shape (len(target) + horizon, k) = ({len(z) + horizon}, k), "
                    f"got {rel.shape}"
                )
            if not np.all(np.isfinite(rel)):
                raise ValueError(f"series[{i}].related contains NaN or infinite values")
            k = rel.shape[1]
        c = 0
        if s.static is not None:
            codes = np.asarray(s.static)
            if codes.ndim != 1 or not np.issubdtype(codes.dtype, np.integer):
                raise ValueError(f"series[{i}].static must be a 1-D integer array, got {codes.shape} ({codes.dtype})")
            c = len(codes)
            if len(cardinalities) != c:
                raise ValueError(f"series[{i}].static has {c} columns but cardinalities gives {len(cardinalities)}")
            bad = np.flatnonzero((codes < 0) | (codes >= np.asarray(cardinalities, dtype=np.int64)))
            if len(bad):
                j = int(bad[0])
                raise ValueError(
                    f"series[{i}].static code {int(codes[j])} in column {j} is out of range [0, {cardinalities[j]})"
                )
        if isinstance(s.start_phase, bool) or not isinstance(s.start_phase, int | np.integer):
            raise ValueError(f"series[{i}].start_phase must be an integer, got {s.start_phase!r}")
        here = _Layout(k, c)
        if layout is None:
            layout = here
        elif (s.related is None) != (series[0].related is None):
            given = {True: "missing", False: "given"}
            raise ValueError(
                f"series[{i}].related is {given[s.related is None]} but series[0].related is "
                f"{given[series[0].related is None]}; all must agree"
            )
        elif here.k != layout.k:
            raise ValueError(f"series[{i}].related has {k} columns where series[0] has {layout.k}; all must agree")
        elif here.c != layout.c:
            raise ValueError(f"series[{i}].static has {c} columns where series[0] has {layout.c}; all must agree")
    assert layout is not None
    return layout


# ---------------------------------------------------------------- the model


class DeepAr:
    """Global autoregressive LSTM forecaster with sampled probabilistic forecasts (module docstring)."""

    name: ClassVar[str] = "deepar"
    # Hyper-parameters a user may set by name (values arrive as strings); horizon, season_length and
    # device come from the dataset and the deployment, not from the user.
    PARAMS: ClassVar[dict[str, type]] = {
        "context_length": int,
        "hidden_size": int,
        "num_layers": int,
        "dropout": float,
        "epochs": int,
        "batch_size": int,
        "learning_rate": float,
        "num_samples": int,
        "likelihood": str,
        "seed": int,
    }

    def __init__(
        self,
        horizon: int,
        season_length: int = 1,
        context_length: int | None = None,
        hidden_size: int = 40,
        num_layers: int = 2,
        dropout: float = 0.1,
        epochs: int = 30,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        num_samples: int = 200,
        likelihood: str = "student-t",
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        self.horizon = _check_int("horizon", horizon, 1)
        self.season_length = _check_int("season_length", season_length, 1)
        if context_length is None:
            context_length = min(max(2 * self.horizon, self.season_length + 1), _MAX_DEFAULT_CONTEXT)
        self.context_length = _check_int("context_length", context_length, 1)
        self.hidden_size = _check_int("hidden_size", hidden_size, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.dropout = _check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        self.epochs = _check_int("epochs", epochs, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.learning_rate = _check_float("learning_rate", learning_rate, 0.0, 10.0)
        self.num_samples = _check_int("num_samples", num_samples, 1)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        self.likelihood = likelihood
        self.seed = _check_int("seed", seed, 0)
        self.device = distributed.device(_resolve_device(device))
        self.lags: tuple[int, ...] = (1,) if self.season_length == 1 else (1, self.season_length)
        # Fitted state (set by fit or load).
        self.net_: _Net | None = None
        self.layout_ = _Layout(0, 0)
        self.has_related_ = False
        self.cardinalities_: tuple[int, ...] = ()
        self.related_mean_ = np.zeros(0)
        self.related_std_ = np.ones(0)
        self.log_scale_mean_ = 0.0
        self.cold_scales_: dict[int, float] = {}  # first static code -> median scale of its training series
        self.global_scale_ = 1.0

    def _hyper_parameters(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon,
            "season_length": self.season_length,
            "context_length": self.context_length,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "num_samples": self.num_samples,
            "likelihood": self.likelihood,
            "seed": self.seed,
        }

    def _new_net(self) -> _Net:
        n_real = 2 * len(self.lags) + self.layout_.k + 1
        net = _Net(
            n_real,
            self.season_length,
            self.cardinalities_,
            self.hidden_size,
            self.num_layers,
            self.dropout,
            _n_params(self.likelihood),
        )
        return net.to(self.device)

    # ---- features ---------------------------------------------------------------------------

    def _cold_scale(self, s: GlobalSeries) -> float:
        if s.static is not None and len(s.static):
            return self.cold_scales_.get(int(s.static[0]), self.global_scale_)
        return self.global_scale_

    def _scale(self, s: GlobalSeries, end: int) -> float:
        """1 + mean |value| over the context that ends before target index `end` (cold scale if empty)."""
        context = np.asarray(s.target, dtype=np.float64)[max(0, end - self.context_length) : max(0, end)]
        return 1.0 + float(np.mean(np.abs(context))) if len(context) else self._cold_scale(s)

    def _inputs(self, s: GlobalSeries, start: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Real features (L, n_real) and phases (L,) of the window of context + horizon steps from
        target index `start` (negative: left padding). Lags that are unknown (before the series, or
        in the future) are 0 with mask 0; forecasting fills the future ones with sampled values."""
        length = self.context_length + self.horizon
        pos = start + np.arange(length)
        z = np.asarray(s.target, dtype=np.float64)
        n_lags, k = len(self.lags), self.layout_.k
        real = np.zeros((length, 2 * n_lags + k + 1), dtype=np.float32)
        for i, lag in enumerate(self.lags):
            idx = pos - lag
            ok = (idx >= 0) & (idx < len(z))
            real[ok, i] = z[idx[ok]] / scale
            real[ok, n_lags + i] = 1.0
        if s.related is not None and k:
            rel = np.asarray(s.related, dtype=np.float64)
            ok = (pos >= 0) & (pos < len(rel))
            real[ok, 2 * n_lags : 2 * n_lags + k] = (rel[pos[ok]] - self.related_mean_) / self.related_std_
        real[:, -1] = math.log(scale) - self.log_scale_mean_
        phase = (int(s.start_phase) + pos) % self.season_length
        return real, phase.astype(np.int64)

    def _static(self, s: GlobalSeries) -> np.ndarray:
        return np.zeros(self.layout_.c, np.int64) if s.static is None else np.asarray(s.static, dtype=np.int64)

    # ---- training ---------------------------------------------------------------------------

    def fit(
        self,
        series: list[GlobalSeries],
        cardinalities: Sequence[int] = (),
        progress: Callable[..., None] | None = None,
    ) -> DeepAr:
        """Trains on random windows of every series with history (cold-start entries are only checked)."""
        cards = tuple(_check_int(f"cardinalities[{j}]", c, 1) for j, c in enumerate(cardinalities))
        layout = _validate(series, self.horizon, cards)
        if layout.c != len(cards):
            raise ValueError(f"cardinalities gives {len(cards)} counts but the series have {layout.c} static columns")
        lengths = np.array([len(s.target) for s in series])
        if not lengths.any():
            raise ValueError("no series has any history to train on (every target is empty)")
        self._check_counts(series)
        self.layout_, self.cardinalities_ = layout, cards
        self.has_related_ = series[0].related is not None
        self._fit_statistics(series)
        report = progress or (lambda *args, **kwargs: None)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded without disturbing the caller's RNG
            torch.manual_seed(self.seed)
            self.net_ = self._new_net()
            self._train(series, lengths, report)
        return self

    def _check_counts(self, series: list[GlobalSeries]) -> None:
        if self.likelihood == "negative-binomial" and any(np.any(np.asarray(s.target) < 0) for s in series):
            raise ValueError("the negative-binomial likelihood needs non-negative targets (counts)")

    def _fit_statistics(self, series: list[GlobalSeries]) -> None:
        """Covariate standardisation, log-scale centre and the cold-start scale table."""
        if self.layout_.k:
            rows = np.concatenate([np.asarray(s.related, dtype=np.float64) for s in series if s.related is not None])
            self.related_mean_ = rows.mean(axis=0)
            std = rows.std(axis=0)
            self.related_std_ = np.where(std > 1e-12, std, 1.0)  # a constant covariate stays 0, not NaN
        else:
            self.related_mean_, self.related_std_ = np.zeros(0), np.ones(0)
        trained = [s for s in series if len(s.target)]
        scales = np.array([1.0 + float(np.mean(np.abs(s.target))) for s in trained])
        self.global_scale_ = float(np.median(scales))
        self.log_scale_mean_ = float(np.mean(np.log(scales)))
        self.cold_scales_ = {}
        if self.layout_.c:
            codes = np.array([int(np.asarray(s.static)[0]) for s in trained])
            for code in np.unique(codes[codes > 0]):  # code 0 (unknown) says nothing: global median
                self.cold_scales_[int(code)] = float(np.median(scales[codes == code]))

    def _batch(self, series: list[GlobalSeries], picks: np.ndarray, ends: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Windows ending (exclusive) at target index ends[r] of series picks[r]."""
        length = self.context_length + self.horizon
        real, phase, static, target, mask, scale = [], [], [], [], [], []
        for i, end in zip(picks, ends, strict=True):
            s = series[i]
            sc = self._scale(s, end - self.horizon)  # context: the first context_length steps of the window
            r, p = self._inputs(s, end - length, sc)
            pos = end - length + np.arange(length)
            ok = pos >= 0
            y = np.zeros(length)
            y[ok] = np.asarray(s.target, dtype=np.float64)[pos[ok]]
            real.append(r)
            phase.append(p)
            static.append(self._static(s))
            target.append(y)
            mask.append(ok)
            scale.append(sc)
        dev = self.device
        return (
            torch.from_numpy(np.stack(real)).to(dev),
            torch.from_numpy(np.stack(phase)).to(dev),
            torch.from_numpy(np.stack(static).reshape(len(picks), self.layout_.c)).to(dev),
            torch.from_numpy(np.stack(target).astype(np.float32)).to(dev),
            torch.from_numpy(np.stack(mask).astype(np.float32)).to(dev),
            torch.tensor(scale, dtype=torch.float32, device=dev)[:, None],
        )

    def _train(self, series: list[GlobalSeries], lengths: np.ndarray, report: Callable[..., None]) -> None:
        """Adam on random windows; an epoch holds about one window per `horizon` observed steps, so
        every observation is, on average, a forecast target once per epoch."""
        assert self.net_ is not None
        net = self.net_
        rng = np.random.default_rng(self.seed)
        weights = lengths / lengths.sum()  # long series get proportionally more windows
        steps = max(1, math.ceil(lengths.sum() / self.horizon / self.batch_size))
        distributed.check_same_settings(self._hyper_parameters())
        distributed.check_same("the number of training steps per epoch", steps)
        distributed.seed_local_randomness(self.seed)
        spread = distributed.current().active
        model = distributed.wrap(net, self.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        length = self.context_length + self.horizon
        start = time.monotonic()
        net.train()
        for epoch in range(1, self.epochs + 1):
            total = 0.0
            for _ in range(steps):
                # The global batch, drawn alike on every rank; each rank builds and trains on its part.
                picks = rng.choice(len(series), size=self.batch_size, p=weights)
                ends = rng.integers(1, lengths[picks] + 1)  # a window ends after 1..T observed steps
                rows, weight = distributed.shard(np.arange(self.batch_size))
                real, phase, static, target, mask, scale = self._batch(series, picks[rows], ends[rows])
                raw, _ = model(real, phase, static)
                summed = (_nll(raw, target, scale, self.likelihood) * mask).sum()
                if spread:
                    # Scored steps of the whole batch: a window ending at `end` has min(end, length) of them.
                    scored = float(np.minimum(ends, length).sum())
                    loss = summed * weight / distributed.loss_divisor(scored)
                else:
                    loss = summed / mask.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), _CLIP_GRAD)
                optimizer.step()
                total += float(loss.detach())
            if spread:
                # Each rank's loss is its share of the batch mean times WORLD_SIZE: the sum over ranks / WORLD_SIZE
                # is the batch mean that one process reports.
                total = distributed.all_sum([total])[0] / distributed.current().world_size
            mean = total / steps
            report(
                epoch / self.epochs,
                f"epoch {epoch}/{self.epochs}",
                epoch=epoch,
                loss=mean,
                seconds=time.monotonic() - start,
            )
        net.eval()

    # ---- forecasting --------------------------------------------------------------------------

    def predict(self, series: list[GlobalSeries], quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> list[Forecast]:
        """Forecasts the `horizon` steps after each series' target (training series or new ones)."""
        if self.net_ is None:
            raise ValueError("DeepAr.fit (or load) must run before predict")
        levels = _levels(quantiles)
        layout = _validate(series, self.horizon, self.cardinalities_)
        if (series[0].related is not None) != self.has_related_ or layout.k != self.layout_.k:
            raise ValueError(
                f"the model was trained with {self.layout_.k if self.has_related_ else 'no'} related columns, "
                f"series[0] has {layout.k if series[0].related is not None else 'none'}"
            )
        if layout.c != self.layout_.c:
            raise ValueError(f"the model was trained with {self.layout_.c} static columns, the series have {layout.c}")
        self._check_counts(series)
        chunk = max(1, _ROWS_PER_PASS // self.num_samples)
        rng = np.random.default_rng(self.seed)  # the same call gives the same paths (also after save/load)
        out: list[Forecast] = []
        with torch.inference_mode():
            for lo in range(0, len(series), chunk):
                paths = self._sample_paths(series[lo : lo + chunk], rng)
                for p in paths:
                    rows = np.sort(np.quantile(p, levels, axis=0), axis=0)
                    out.append(Forecast(mean=p.mean(axis=0), levels=levels, quantiles=rows))
        return out

    def _sample_paths(self, series: list[GlobalSeries], rng: np.random.Generator) -> np.ndarray:
        """(n, num_samples, horizon) float64 sample paths by ancestral sampling."""
        assert self.net_ is not None
        net, dev = self.net_, self.device
        c, h, n_lags, s_count = self.context_length, self.horizon, len(self.lags), self.num_samples
        scales = [self._scale(s, len(s.target)) for s in series]
        windows = [self._inputs(s, len(s.target) - c, sc) for s, sc in zip(series, scales, strict=True)]
        real = torch.from_numpy(np.stack([w[0] for w in windows])).to(dev)
        phase = torch.from_numpy(np.stack([w[1] for w in windows])).to(dev)
        codes = np.stack([self._static(s) for s in series]).reshape(len(series), self.layout_.c)
        static = torch.from_numpy(codes).to(dev)
        scale = torch.tensor(scales, dtype=torch.float32, device=dev)
        _, (hx, cx) = net(real[:, :c], phase[:, :c], static)
        # One row per (series, sample) from here on.
        state = (hx.repeat_interleave(s_count, dim=1), cx.repeat_interleave(s_count, dim=1))
        real_f = real[:, c:].repeat_interleave(s_count, dim=0)
        phase_f = phase[:, c:].repeat_interleave(s_count, dim=0)
        static_f = static.repeat_interleave(s_count, dim=0)
        scale_f = scale.repeat_interleave(s_count)
        future = torch.zeros(real_f.shape[0], h, device=dev)  # sampled values / scale, fed back as lags
        paths = np.empty((real_f.shape[0], h))
        for step in range(h):
            x = real_f[:, step : step + 1].clone()
            for i, lag in enumerate(self.lags):
                if step - lag >= 0:  # the lag falls on a sampled step: feed the sample back
                    x[:, 0, i] = future[:, step - lag]
                    x[:, 0, n_lags + i] = 1.0
            raw, state = net(x, phase_f[:, step : step + 1], static_f, state)
            paths[:, step] = _sample(raw[:, 0], scale_f, self.likelihood, rng)
            future[:, step] = torch.from_numpy(paths[:, step]).to(future) / scale_f
        return paths.reshape(len(series), s_count, h)

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Writes weights.pt (a state_dict of tensors) and config.json (hyper-parameters and scales)."""
        if self.net_ is None:
            raise ValueError("DeepAr.fit must run before save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.net_.state_dict().items()}, directory / _WEIGHTS)
        config = {
            "format": _FORMAT,
            "params": self._hyper_parameters(),
            "k": self.layout_.k,
            "c": self.layout_.c,
            "has_related": self.has_related_,
            "cardinalities": list(self.cardinalities_),
            "related_mean": self.related_mean_.tolist(),
            "related_std": self.related_std_.tolist(),
            "log_scale_mean": self.log_scale_mean_,
            "cold_scales": {str(k): v for k, v in self.cold_scales_.items()},
            "global_scale": self.global_scale_,
        }
        (directory / _CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path, device: str | None = None) -> DeepAr:
        """Reads what `save` wrote, onto `device` (None: cuda when available)."""
        directory = Path(directory)
        config = json.loads((directory / _CONFIG).read_text())
        if config.get("format") != _FORMAT:
            raise ValueError(f"unsupported DeepAR model format {config.get('format')!r}")
        model = cls(**config["params"], device=device)
        model.layout_ = _Layout(int(config["k"]), int(config["c"]))
        model.has_related_ = bool(config["has_related"])
        model.cardinalities_ = tuple(int(c) for c in config["cardinalities"])
        model.related_mean_ = np.asarray(config["related_mean"], dtype=np.float64)
        model.related_std_ = np.asarray(config["related_std"], dtype=np.float64)
        model.log_scale_mean_ = float(config["log_scale_mean"])
        model.cold_scales_ = {int(k): float(v) for k, v in config["cold_scales"].items()}
        model.global_scale_ = float(config["global_scale"])
        net = model._new_net()
        net.load_state_dict(torch.load(directory / _WEIGHTS, map_location=model.device, weights_only=True))
        model.net_ = net.eval()
        return model
