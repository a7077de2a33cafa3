"""Serving engine: a loaded artifact turned into fast answers. Pure numpy (the model may use torch).

Speed comes from not touching the whole catalogue per request where possible:
- each user's top candidates (training and recent history excluded) are computed on the user's first
  request and kept in an LRU cache of `cache_size` users, so memory follows the users served, not the
  users trained on (`warm` fills it for the most recent users after activation, within a time budget);
  an entry carries the `stamp` of the recent events it was computed with, so a new event for the user
  makes it stale without any callback;
- catalogues of ann.MIN_ITEMS items and more take candidates from an approximate nearest-neighbour index
  over the model's factors (ann.py), once `build_index` has built it, and score only those exactly;
- filters become item masks (cached per filter and values) applied to the cached candidates;
  only when a filter leaves fewer than `n` candidates is the full catalogue scored again (exactly);
- ranking scores only the listed items (`Recommender.score_items`).

Exploration (cold start): items with no interactions (unless their creation time is older than
the cutoff) and items created within `cutoff_days` of the newest interaction are "new". With
weight w > 0, round(w * n) of the n slots (at least 1, at most n // 2) go to new items the user
has not interacted with, ranked by how many categorical metadata tokens ("|"-separated values
of non-numeric item fields) they share with the user's history, newest first on ties. They are
spread evenly through the list, carry reason "exploration" and no score.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from foretell.recipes.artifact import Artifact
from foretell.recipes.base import Recommender
from foretell.recommendation import ann
from foretell.recommendation.filters import BoundFilter

NEG = np.float32(-np.inf)
DAY = 86400.0
DEFAULT_CUTOFF_DAYS = 30.0
# Item fields with more distinct values than this share of the catalogue are ids or free text,
# not categories: exploration ignores them.
CATEGORY_SHARE = 0.5


# (item_id, score, reason): reason is "model", "popular" or "exploration", and "" with no score for
# items the model does not know. Plain tuples: built by zip in C, several times cheaper than a
# NamedTuple on the request path.
Scored = tuple[str, float | None, str]


_MISSING: Any = object()


class UnknownItem(LookupError):
    """The item is not in the model's catalogue."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id


@dataclass(frozen=True)
class Exploration:
    weight: float = 0.0
    cutoff_days: float = 0.0  # 0 means DEFAULT_CUTOFF_DAYS

    def slots(self, n: int) -> int:
        if self.weight <= 0 or n < 2:
            return 0
        return min(n // 2, max(1, round(self.weight * n)))


@dataclass(frozen=True)
class RecentEvents:
    """A user's (or anonymous session's) latest real-time events, oldest first.

    `stamp` changes whenever the events change and never repeats (see events.py); () means none.
    """

    items: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    stamp: tuple[int, ...] = ()


NO_EVENTS = RecentEvents()


@dataclass
class _Candidates:
    stamp: tuple[int, ...]
    items: np.ndarray  # int32, best first, interacted items excluded
    scores: np.ndarray  # float32
    complete: bool  # every item not excluded is here


class _Lru:
    """At most `capacity` entries; the least recently used goes first. Reads take no lock."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[Any, _Candidates] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> _Candidates | None:
        entry = self._entries.get(key)
        if entry is not None:
            with contextlib.suppress(KeyError):  # evicted meanwhile
                self._entries.move_to_end(key)
        return entry

    def put(self, key: Any, entry: _Candidates, replace: bool = True) -> None:
        with self._lock:
            if not replace and key in self._entries:
                return
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _FieldIndex:
    inverse: np.ndarray  # (n_items,) index of each item's value in `values`
    values: list[str]
    token_items: dict[str, np.ndarray]  # token -> item indices holding it
    value_tokens: list[list[str]]


@dataclass
class _Content:
    """Categorical tokens of one field for content matching: value -> global token ids (CSR)."""

    inverse: np.ndarray
    value_of_entry: np.ndarray  # value index of each (value, token) entry
    token_of_entry: np.ndarray  # global token id of each entry
    n_values: int


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores, best first (argpartition: O(n), not a full sort)."""
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
    order = part[np.argsort(-scores[part], kind="stable")]
    return order[scores[order] > NEG]


class ItemCatalog:
    """Item metadata, indexed lazily per field (implements filters.ItemTable)."""

    def __init__(
        self, item_ids: np.ndarray, index: dict[str, int], features: dict[str, np.ndarray], created: np.ndarray | None
    ) -> None:
        self.n_items = len(item_ids)
        self._ids = item_ids
        self._index = index
        self._features = features
        self._created = created
        self._names = {name.upper(): name for name in features}
        self._names.setdefault("ITEM_ID", "ITEM_ID")
        if created is not None:
            self._names.setdefault("CREATION_TIMESTAMP", "CREATION_TIMESTAMP")
        self._fields: dict[str, _FieldIndex] = {}
        self._numeric: dict[str, np.ndarray] = {}
        self._content: list[_Content] | None = None
        self._n_tokens = 0
        self._lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        return list(self._features)

    def field_name(self, name: str) -> str | None:
        return self._names.get(name.upper())

    def value(self, field_name: str, item: int) -> str:
        if field_name == "ITEM_ID":
            return str(self._ids[item])
        if field_name in self._features:
            return str(self._features[field_name][item])
        created = self._created[item] if self._created is not None else np.nan
        return "" if np.isnan(created) else str(int(created))

    def _field(self, name: str) -> _FieldIndex:
        index = self._fields.get(name)
        if index is not None:
            return index
        with self._lock:
            if name not in self._fields:
                self._fields[name] = self._build_field(self._features[name])
            return self._fields[name]

    def _build_field(self, column: np.ndarray) -> _FieldIndex:
        values, inverse = np.unique(column.astype(str), return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1))
        per_token: dict[str, list[np.ndarray]] = {}
        value_tokens: list[list[str]] = []
        for v, text in enumerate(values.tolist()):
            tokens = [t.strip() for t in text.split("|") if t.strip()]
            value_tokens.append(tokens)
            for token in dict.fromkeys(tokens):
                per_token.setdefault(token, []).append(order[bounds[v] : bounds[v + 1]])
        token_items = {t: np.concatenate(parts) if len(parts) > 1 else parts[0] for t, parts in per_token.items()}
        return _FieldIndex(inverse.astype(np.int32), values.tolist(), token_items, value_tokens)

    def token_mask(self, field_name: str, tokens: Collection[str]) -> np.ndarray:
        mask = np.zeros(self.n_items, dtype=bool)
        if field_name == "ITEM_ID":
            found = [self._index[t] for t in tokens if t in self._index]
            mask[found] = True
            return mask
        if field_name == "CREATION_TIMESTAMP":
            column = self.numeric(field_name)
            for token in tokens:
                try:
                    mask |= column == float(token)
                except ValueError:
                    continue
            return mask
        index = self._field(field_name)
        for token in tokens:
            items = index.token_items.get(token)
            if items is not None:
                mask[items] = True
        return mask

    def numeric(self, field_name: str) -> np.ndarray:
        column = self._numeric.get(field_name)
        if column is not None:
            return column
        if field_name == "CREATION_TIMESTAMP" and field_name not in self._features:
            assert self._created is not None
            column = self._created.astype(np.float64)
        elif field_name == "ITEM_ID":
            column = np.full(self.n_items, np.nan)
        else:
            index = self._field(field_name)
            column = np.array([_number(v) for v in index.values], dtype=np.float64)[index.inverse]
        self._numeric[field_name] = column
        return column

    # ---- content matching (exploration) ----------------------------------------------------

    def _content_index(self) -> list[_Content]:
        if self._content is not None:
            return self._content
        contents: list[_Content] = []
        token_ids: dict[tuple[str, str], int] = {}
        limit = max(50, CATEGORY_SHARE * self.n_items)
        for name in self._features:
            index = self._field(name)
            nonempty = [v for v in index.values if v]
            if not nonempty or len(index.values) > limit or all(not np.isnan(_number(v)) for v in nonempty):
                continue
            entry_value: list[int] = []
            entry_token: list[int] = []
            for v, tokens in enumerate(index.value_tokens):
                for token in dict.fromkeys(tokens):
                    entry_value.append(v)
                    entry_token.append(token_ids.setdefault((name, token), len(token_ids)))
            contents.append(
                _Content(
                    index.inverse,
                    np.asarray(entry_value, dtype=np.int64),
                    np.asarray(entry_token, dtype=np.int64),
                    len(index.values),
                )
            )
        self._n_tokens = len(token_ids)
        self._content = contents
        return contents

    def content_scores(self, profile_items: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Per candidate, how many of its metadata tokens the profile items hold (weighted by count)."""
        contents = self._content_index()
        out = np.zeros(len(candidates), dtype=np.float64)
        if not contents or len(profile_items) == 0 or len(candidates) == 0:
            return out
        weights = np.zeros(self._n_tokens, dtype=np.float64)
        for c in contents:
            value_counts = np.bincount(c.inverse[profile_items], minlength=c.n_values)
            weights += np.bincount(c.token_of_entry, weights=value_counts[c.value_of_entry], minlength=self._n_tokens)
        for c in contents:
            value_scores = np.bincount(c.value_of_entry, weights=weights[c.token_of_entry], minlength=c.n_values)
            out += value_scores[c.inverse[candidates]]
        return out


def _number(text: str) -> float:
    try:
        return float(text) if text else np.nan
    except ValueError:
        return np.nan


class _UserItems:
    """The requesting user's interacted items by event type (implements filters.UserItems)."""

    def __init__(self, engine: Engine, user: int, recent: Sequence[tuple[int, str]]) -> None:
        self._engine = engine
        self._user = user
        self._recent = recent

    def items_with_event_types(self, event_types: Collection[str], negate: bool) -> np.ndarray:
        e = self._engine
        parts = []
        if self._user >= 0:
            lo, hi = e.hist_ptr[self._user], e.hist_ptr[self._user + 1]
            wanted = np.array([(name in event_types) != negate for name in e.event_type_names], dtype=bool)
            parts.append(e.hist_items[lo:hi][wanted[e.hist_types[lo:hi]]])
        parts.append(np.array([i for i, t in self._recent if (t in event_types) != negate], dtype=np.int32))
        return np.concatenate(parts)


@dataclass
class _Request:
    """What one request knows about its user, computed once."""

    user: int
    sequence: np.ndarray  # training history + recent events (item indices, time order)
    recent: list[tuple[int, str]]
    stamp: tuple[int, ...]
    allowed: np.ndarray | None = None
    excluded: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))

    @property
    def cold(self) -> bool:
        return len(self.sequence) == 0


class Engine:
    """Answers for one loaded artifact. Thread-safe; immutable apart from its caches."""

    def __init__(self, artifact: Artifact, *, candidates: int = 100, cache_size: int = 100_000) -> None:
        data = artifact.data
        self.artifact = artifact
        self.model: Recommender = artifact.model
        self.recipe = artifact.recipe
        self.candidates = candidates
        self.cache_size = cache_size
        self.n_items = data.n_items
        self.item_ids: np.ndarray = np.asarray(data.item_ids, dtype=object)
        self.item_index: dict[str, int] = {str(v): i for i, v in enumerate(self.item_ids.tolist())}
        self.user_index: dict[str, int] = {str(v): i for i, v in enumerate(np.asarray(data.user_ids).tolist())}
        # Histories as CSR; a stable sort by user keeps each user's events in time order.
        order = np.argsort(data.users, kind="stable")
        self.hist_items: np.ndarray = data.items[order].astype(np.int32)
        self.hist_types: np.ndarray = data.event_types[order]
        self.hist_ptr: np.ndarray = np.concatenate([[0], np.cumsum(np.bincount(data.users, minlength=data.n_users))])
        self._last_seen = np.full(data.n_users, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(self._last_seen, data.users, data.timestamps.astype(np.int64))
        self.event_type_names: tuple[str, ...] = tuple(data.event_type_names) or ("",)
        counts = np.bincount(data.items, minlength=self.n_items).astype(np.float64)
        self.popularity = (counts / max(1.0, counts.sum())).astype(np.float32)
        self._popular = np.argsort(-counts, kind="stable")
        self._cold = counts == 0
        self._newest = float(data.timestamps.max()) if len(data.timestamps) else 0.0
        self._created = data.item_created
        self.catalog = ItemCatalog(self.item_ids, self.item_index, data.item_features, data.item_created)
        self._cache = _Lru(cache_size)
        self._similar = _Lru(cache_size)
        self._factors = ann.factors_of(self.model) if self.n_items >= ann.MIN_ITEMS else None
        self.index: ann.ItemIndex | None = None  # set by build_index
        self._masks: dict[Any, np.ndarray | None] = {}
        self._new_items: dict[float, np.ndarray] = {}
        self._lock = threading.Lock()

    # ---- helpers ---------------------------------------------------------------------------

    def history(self, user: int) -> np.ndarray:
        return self.hist_items[self.hist_ptr[user] : self.hist_ptr[user + 1]]

    def _request(
        self, user_id: str | None, recent: RecentEvents, item_filter: BoundFilter | None, exclude: bool
    ) -> _Request:
        user = self.user_index.get(user_id, -1) if user_id else -1
        index = self.item_index
        pairs = [(index[i], t) for i, t in zip(recent.items, recent.event_types, strict=False) if i in index]
        history = self.history(user) if user >= 0 else self.hist_items[:0]
        sequence = np.concatenate([history, np.array([i for i, _ in pairs], dtype=np.int32)]) if pairs else history
        req = _Request(user, sequence, pairs, recent.stamp)
        if exclude:
            req.excluded = sequence
        if item_filter is not None:
            req.allowed = self.filter_mask(item_filter, user, pairs)
        return req

    def filter_mask(self, item_filter: BoundFilter, user: int, recent: Sequence[tuple[int, str]]) -> np.ndarray | None:
        """Allowed items; the Items part is cached per filter and values."""
        key = item_filter.key
        static = self._masks.get(key, _MISSING)
        if static is _MISSING:
            item_filter.check_fields(self.catalog)
            static = item_filter.item_mask(self.catalog)
            with self._lock:
                if len(self._masks) >= 256:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[key] = static
        if not item_filter.uses_interactions:
            return static
        per_user = item_filter.user_mask(self.catalog, _UserItems(self, user, recent))
        if static is None:
            return per_user
        return static if per_user is None else static & per_user

    def _score_row(self, req: _Request) -> np.ndarray:
        """A fresh, writable (n_items,) float32 score vector."""
        scores = self.model.score(np.array([req.user], dtype=np.int64), [req.sequence])
        return np.array(scores[0], dtype=np.float32, copy=True)

    def _candidates_from(
        self, scores: np.ndarray, excluded: np.ndarray, stamp: tuple[int, ...], m: int | None = None
    ) -> _Candidates:
        m = self.candidates if m is None else m
        scores[excluded] = NEG
        top = top_k(scores, m)
        return _Candidates(stamp, top.astype(np.int32), scores[top], len(top) < m)

    def _candidates(self, req: _Request, m: int, excluded: np.ndarray) -> _Candidates:
        """The request's best m items without `excluded`: from the index when there is one, else exactly."""
        index = self.index
        if index is None:
            return self._candidates_from(self._score_row(req), excluded, req.stamp, m)
        # Over-fetch by the exclusions, so that m are left once they are dropped.
        k = min(self.n_items, m + len(excluded))
        queries = index.factors.queries(np.array([req.user], dtype=np.int64), [req.sequence])
        found, scores = index.recommend(queries, k)
        keep = (scores[0] > NEG) & ~np.isin(found[0], excluded)
        items, scores = found[0][keep][:m], scores[0][keep][:m]
        return _Candidates(req.stamp, items.astype(np.int32), scores, complete=k >= self.n_items and len(items) < m)

    def build_index(self) -> bool:
        """Builds the nearest-neighbour index of a big catalogue (ann.py); until then answers are exact.

        False when the catalogue is small or the model has no factors. Entries cached before stay valid (exact).
        """
        if self._factors is None:
            return False
        if self.index is None:
            self.index = ann.ItemIndex(self._factors)
        return True

    # ---- recommendations ------------------------------------------------------------------

    def recommend(
        self,
        user_id: str | None,
        recent: RecentEvents = NO_EVENTS,
        n: int = 25,
        *,
        exclude_interacted: bool = True,
        item_filter: BoundFilter | None = None,
        exploration: Exploration | None = None,
    ) -> list[Scored]:
        req = self._request(user_id, recent, item_filter, exclude_interacted)
        explore = exploration.slots(n) if exploration is not None else 0
        if req.cold:
            items, scores = self._popular_top(req, n)
            reason = "popular"
        else:
            items, scores = self._model_top(req, n, exclude_interacted)
            reason = "model"
        result: list[Scored] = list(zip(self.item_ids[items].tolist(), scores.tolist(), repeat(reason)))
        if explore and exploration is not None:
            picks = self._explore(req, items[: n - explore], explore, exploration.cutoff_days)
            if picks:
                chosen = set(picks)
                main = [r for r in result if r[0] not in chosen][: n - len(picks)]
                result = _spread(main, [(i, None, "exploration") for i in picks])
        return result

    def _popular_top(self, req: _Request, n: int) -> tuple[np.ndarray, np.ndarray]:
        order = self._popular if req.allowed is None else self._popular[req.allowed[self._popular]]
        items = order[:n]
        return items, self.popularity[items]

    def _model_top(self, req: _Request, n: int, exclude: bool) -> tuple[np.ndarray, np.ndarray]:
        entry: _Candidates | None = None
        if exclude and n <= self.candidates:
            key: Any = req.user if req.user >= 0 else ("anon", *req.stamp)
            entry = self._cache.get(key)
            if entry is None or entry.stamp != req.stamp:
                entry = self._candidates(req, self.candidates, req.excluded)
                self._cache.put(key, entry)
        elif self.index is not None:
            entry = self._candidates(req, n, req.excluded if exclude else req.excluded[:0])
        if entry is not None:
            keep = np.arange(len(entry.items)) if req.allowed is None else np.flatnonzero(req.allowed[entry.items])
            if len(keep) >= n or entry.complete:
                return entry.items[keep[:n]], entry.scores[keep[:n]]
        # The filter ate the candidates (or no cache applies): score the whole catalogue.
        scores = self._score_row(req)
        if exclude:
            scores[req.excluded] = NEG
        if req.allowed is not None:
            scores[~req.allowed] = NEG
        top = top_k(scores, n)
        return top, scores[top]

    def _explore(self, req: _Request, taken: np.ndarray, k: int, cutoff_days: float) -> list[str]:
        new = self.new_items(cutoff_days)
        if len(new) == 0:
            return []
        keep = ~np.isin(new, req.excluded) & ~np.isin(new, taken)
        if req.allowed is not None:
            keep &= req.allowed[new]
        candidates = new[keep]
        if len(candidates) == 0:
            return []
        similarity = self.catalog.content_scores(req.sequence, candidates)
        # `new` is newest first, so a stable sort keeps the newest first among equal matches.
        best = candidates[np.argsort(-similarity, kind="stable")[:k]]
        return [str(v) for v in self.item_ids[best].tolist()]

    def prepare_exploration(self, cutoff_days: float = 0.0) -> None:
        """Builds what exploration needs (new items, metadata tokens) before the first request does."""
        self.new_items(cutoff_days)
        self.catalog.content_scores(self.hist_items[:1], self.new_items(cutoff_days)[:1])

    def new_items(self, cutoff_days: float = 0.0) -> np.ndarray:
        """Items exploration may show, newest first (see the module docstring)."""
        cutoff = cutoff_days if cutoff_days > 0 else DEFAULT_CUTOFF_DAYS
        found = self._new_items.get(cutoff)
        if found is not None:
            return found
        if self._created is None:
            is_new = self._cold
            created = np.zeros(self.n_items)
        else:
            created = np.asarray(self._created, dtype=np.float64)
            known = ~np.isnan(created)
            recent = known & (created >= self._newest - cutoff * DAY)
            is_new = recent | (self._cold & ~known)
            created = np.where(known, created, -np.inf)
        items = np.flatnonzero(is_new)
        found = items[np.argsort(-created[items], kind="stable")]
        self._new_items[cutoff] = found
        return found

    # ---- ranking and similar items ---------------------------------------------------------

    def rank(
        self,
        user_id: str | None,
        item_ids: Sequence[str],
        recent: RecentEvents = NO_EVENTS,
        *,
        item_filter: BoundFilter | None = None,
    ) -> list[Scored]:
        """`item_ids` re-ordered for the user; unknown items last, unscored, in input order.

        Known items the filter rejects are dropped. `item_ids` must not hold duplicates.
        """
        req = self._request(user_id, recent, item_filter, exclude=False)
        get = self.item_index.get
        positions = np.array([get(i, -1) for i in item_ids], dtype=np.int64)
        known = np.flatnonzero(positions >= 0)
        if req.allowed is not None:
            known = known[req.allowed[positions[known]]]
        items = positions[known]
        if req.cold:
            scores, reason = self.popularity[items], "popular"
        else:
            scores, reason = self._scores_of(req, items), "model"
        order = np.argsort(-scores, kind="stable")
        # The request's own id strings (hot in cache), not the catalogue's.
        ids = map(item_ids.__getitem__, known[order].tolist())
        ranked: list[Scored] = list(zip(ids, scores[order].tolist(), repeat(reason)))
        if len(known) < len(item_ids):
            ranked.extend((item_ids[p], None, "") for p in np.flatnonzero(positions < 0).tolist())
        return ranked

    def _scores_of(self, req: _Request, items: np.ndarray) -> np.ndarray:
        user = np.array([req.user], dtype=np.int64)
        return np.asarray(self.model.score_items(user, [req.sequence], items), dtype=np.float32)[0]

    def similar(self, item_id: str, n: int = 25, *, item_filter: BoundFilter | None = None) -> list[Scored]:
        """Items most similar to `item_id` (itself excluded); UnknownItem when it is not in the model."""
        item = self.item_index.get(item_id)
        if item is None:
            raise UnknownItem(item_id)
        allowed = self.filter_mask(item_filter, -1, ()) if item_filter is not None else None
        entry = self._similar.get(item)
        if entry is None:
            if self.index is not None:
                found, found_scores = self.index.similar(item, self.candidates + 1)
                keep = (found != item) & (found_scores > NEG)
                top = found[keep][: self.candidates]
                entry = _Candidates((), top.astype(np.int32), found_scores[keep][: self.candidates], False)
            else:
                row = np.array(self.model.similar(np.array([item]))[0], dtype=np.float32, copy=True)
                entry = self._candidates_from(row, np.array([item]), ())
            self._similar.put(item, entry)
        keep = np.arange(len(entry.items)) if allowed is None else np.flatnonzero(allowed[entry.items])
        if len(keep) >= n or entry.complete:
            top, scores = entry.items[keep[:n]], entry.scores[keep[:n]]
        else:
            row = np.array(self.model.similar(np.array([item]))[0], dtype=np.float32, copy=True)
            row[item] = NEG
            if allowed is not None:
                row[~allowed] = NEG
            top = top_k(row, n)
            scores = row[top]
        return list(zip(self.item_ids[top].tolist(), scores.tolist(), repeat("model")))

    # ---- metadata and warm-up --------------------------------------------------------------

    def metadata(self, item_id: str, columns: Sequence[str]) -> dict[str, str]:
        """Values of `columns` (catalogue spellings, see catalog.field_name); missing ones left out."""
        item = self.item_index.get(item_id)
        if item is None:
            return {}
        values = {c: self.catalog.value(c, item) for c in columns}
        return {c: v for c, v in values.items() if v}

    def warm(self, max_users: int | None = None, seconds: float | None = None) -> int:
        """Caches the top candidates of the most recently active users, in batches, for at most `seconds`.

        Returns how many users were cached. Entries computed meanwhile from newer events win.
        """
        deadline = time.monotonic() + seconds if seconds is not None else float("inf")
        limit = min(self.cache_size, max_users if max_users is not None else len(self._last_seen))
        users = np.argsort(-self._last_seen, kind="stable")[:limit]
        chunk = max(1, min(1024, 64 * 1024 * 1024 // (4 * max(1, self.n_items))))
        done = 0
        for start in range(0, len(users), chunk):
            if time.monotonic() >= deadline:
                break
            batch = users[start : start + chunk].tolist()
            if self.index is not None:
                entries = [self._candidates(_Request(u, h, [], (), excluded=h), self.candidates, h)
                           for u, h in ((u, self.history(u)) for u in batch)]  # fmt: skip
            else:
                entries = self._exact_batch(batch)
            for user, entry in zip(batch, entries, strict=True):
                self._cache.put(user, entry, replace=False)
            done += len(batch)
        return done

    def _exact_batch(self, users: list[int]) -> list[_Candidates]:
        """Exact top candidates of training users (their training history excluded), scored as one matrix."""
        histories = [self.history(u) for u in users]
        scores = np.array(self.model.score(np.array(users, dtype=np.int64), histories), dtype=np.float32, copy=True)
        lengths = np.array([len(h) for h in histories])
        scores[np.repeat(np.arange(len(users)), lengths), np.concatenate(histories)] = NEG
        m = min(self.candidates, self.n_items)
        if m < self.n_items:
            part = np.argpartition(scores, self.n_items - m, axis=1)[:, self.n_items - m :]
        else:
            part = np.tile(np.arange(self.n_items), (len(users), 1))
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1).astype(np.int32)
        best_scores = np.take_along_axis(part_scores, order, axis=1)
        entries = []
        for row in range(len(users)):
            finite = best_scores[row] > NEG
            entries.append(_Candidates((), best[row][finite], best_scores[row][finite], int(finite.sum()) < m))
        return entries


def _spread(main: list[Scored], extra: list[Scored]) -> list[Scored]:
    """Places `extra` evenly among `main` (k extras in n slots: around (j + 1) * n / (k + 1))."""
    total, k = len(main) + len(extra), len(extra)
    if len(main) < k:
        return main + extra
    # With n >= 2k the slots are at least one apart, so rounding keeps them distinct and < n.
    slots = {int((j + 1) * total / (k + 1) + 0.5) for j in range(k)}
    m, e = iter(main), iter(extra)
    return [next(e) if position in slots else next(m) for position in range(total)]
