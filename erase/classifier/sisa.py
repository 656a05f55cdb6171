"""SISA training (Bourtoule et al., IEEE S&P 2021): Sharded, Isolated, Sliced, Aggregated.

The training set is split into S disjoint shards, each shard into R slices. Each shard has its
own constituent model (any torch classifier from a factory), trained incrementally: step r
trains on slices 0..r for ``epochs_per_slice`` epochs, starting from the checkpoint of step
r - 1, and saves a checkpoint. As in the published code, every checkpoint is keyed by a hash
of the sample ids it has seen, so a deletion reuses the longest unchanged prefix: only the
shards that held a deleted point are retrained, from the checkpoint saved before the first
slice that held one.

Exactness: every step uses a fresh optimizer and a shuffling generator seeded by
(seed, shard, slice), and the samples of a prefix are taken in ascending id order. Resuming
from a checkpoint is therefore bit-identical to training from scratch on the remaining data
with the same shard/slice assignment (tested).

Aggregation: ``vote`` (majority of the constituents' labels; probabilities = vote shares) or
``softmax`` (mean of the constituents' softmax outputs). Shards left empty by deletions drop
out of the vote.

Sharding: ``uniform`` (a seeded permutation cut with ``np.array_split``, so no sample is dropped
when N is not divisible by S or R), or distribution-aware given per-sample deletion
probabilities p_i. Requests are independent Bernoulli trials, so the number of requests in a
shard is Poisson binomial and the shard is hit with probability 1 - prod(1 - p_i); points
sorted by p_i are cut into shards that minimise the expected number of samples in hit shards
(:func:`expected_cost`), so likely-deleted points share a few shards; inside a shard the
likeliest points go to the last slices, so their deletion retrains little. (The published
code's distribution-aware branch crashes; this is our own formulation of the same goal.)

Checkpoints live in memory or, with ``checkpoint_dir``, as safetensors files (never pickle),
written to a temp path and renamed. ``save(dir)`` / ``SISAModel.load(dir)`` keep the whole model
on disk (:mod:`erase.classifier.sisa_store`): a deletion in a new process retrains exactly what
an in-process one would, bit for bit.

Executors: each shard's (re)training is one :class:`ShardTask` run by the pure function
:func:`train_shard`. The config's ``executor`` picks where the tasks run (:mod:`erase.classifier.executors`):
``serial`` (here, the default), ``process`` (a local pool of ``workers`` processes) or ``ray``
(one Ray task per shard, locally or on a cluster at ``ray_address``); ``SISAModel(...,
executor=f)`` takes any other ``f(tasks) -> results``. A task fixes torch's thread count
(``threads``), so every executor gives the same bits (tested). Checkpoints are read and written
by the driver only; tasks carry their start checkpoint and return their state dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from erase.classifier.executors import EXECUTORS, check_ray_address, make_executor
from erase.classifier.models import TrainConfig, save_tensors, seeded, train_classifier
from erase.classifier.options import COUNT, POSITIVE, check
from erase.errors import EraseError


@dataclass
class SISAConfig:
    """SISA: S shards x R slices, checkpoint per slice, aggregated constituents."""

    shards: int = field(default=5, metadata={"help": "number of shards S (paper: 5-20; accuracy falls as S grows)"})
    slices: int = field(default=4, metadata={"help": "slices per shard R (checkpoint after each)"})
    epochs_per_slice: int = field(default=10, metadata={"help": "epochs of each incremental step on slices 0..r"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of the constituents"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size"})
    aggregation: str = field(default="vote", metadata={"help": "'vote' (majority label) or 'softmax' (mean probabilities)"})
    sharding: str = field(default="uniform", metadata={"help": "'uniform' or 'distribution' (needs deletion probabilities)"})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "folder for safetensors checkpoints; None keeps them in memory. "
                                                                   "Written by the driver only (workers get and return state dicts); "
                                                                   "on a Ray cluster use a path on storage every node mounts if "
                                                                   "another machine is to resume from it"})
    executor: str = field(default="serial", metadata={"help": "where shards train: 'serial' (this process), 'process' (a local "
                                                              "process pool) or 'ray' (Ray tasks; pip install 'erase[ray]'); same bits on each"})
    workers: int | None = field(default=None, metadata={"help": "process: pool size (None: CPU count); ray: most shard tasks at "
                                                                "once (None: as many as Ray schedules); a local Ray instance gets this many CPUs"})
    ray_address: str | None = field(default=None, metadata={"help": "None: start (or reuse) a local Ray instance; 'auto': the cluster "
                                                                    "started on this machine; 'host:port' or 'ray://host:port': a cluster"})
    ray_num_cpus: float = field(default=1.0, metadata={"help": "CPUs Ray reserves for each shard task"})
    ray_connect_timeout: float = field(default=10.0, metadata={"help": "seconds to wait for ray_address to answer"})
    threads: int | None = field(default=None, metadata={"help": "torch threads per shard task (None: this process's count); fixed "
                                                               "per task so that every executor gives the same bits"})

    def __post_init__(self):
        check(self, {
            "shards": COUNT, "slices": COUNT, "epochs_per_slice": COUNT, "lr": POSITIVE, "batch_size": COUNT,
            "aggregation": ("vote", "softmax"), "sharding": ("uniform", "distribution"), "executor": EXECUTORS,
            "ray_num_cpus": POSITIVE, "ray_connect_timeout": POSITIVE,
        })
        check(self, {k: COUNT for k in ("workers", "threads") if getattr(self, k) is not None})
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            raise EraseError(f"SISA option checkpoint_dir must be a folder name or null, got {self.checkpoint_dir!r}")
        check_ray_address(self.ray_address)


@dataclass
class Assignment:
    """Shard and slice of every training sample (id = position in the training set)."""

    shard: np.ndarray
    slice: np.ndarray
    n_shards: int
    n_slices: int

    def subset(self, ids: np.ndarray) -> "Assignment":
        return Assignment(self.shard[ids], self.slice[ids], self.n_shards, self.n_slices)


def _check_sizes(n: int, shards: int, slices: int) -> None:
    if shards < 1 or slices < 1:
        raise EraseError(f"SISA needs at least 1 shard and 1 slice, got S={shards}, R={slices}")
    if shards > n:
        raise EraseError(f"S={shards} shards is more than the {n} training samples")


def _split_into_slices(order: np.ndarray, slices: int, slice_of: np.ndarray) -> None:
    for r, part in enumerate(np.array_split(order, slices)):
        slice_of[part] = r


def uniform_assignment(n: int, shards: int, slices: int, seed: int = 0) -> Assignment:
    """Seeded random shards of near-equal size (sizes differ by at most 1; nothing dropped)."""
    _check_sizes(n, shards, slices)
    perm = np.random.default_rng(seed).permutation(n)
    shard_of = np.empty(n, dtype=np.int64)
    slice_of = np.empty(n, dtype=np.int64)
    for s, part in enumerate(np.array_split(perm, shards)):
        shard_of[part] = s
        _split_into_slices(part, slices, slice_of)
    return Assignment(shard_of, slice_of, shards, slices)


def distribution_aware_assignment(
    p: np.ndarray, shards: int, slices: int, min_shard_fraction: float = 0.5
) -> Assignment:
    """Group likely-deleted points into few shards, minimising the expected retraining cost.

    Points are sorted by p (likeliest first) and cut into S contiguous shards by dynamic
    programming so that the expected number of samples in shards hit by at least one request,
    sum_s (1 - prod_{i in s} (1 - p_i)) * |s|, is minimal, with every shard holding at least
    ``min_shard_fraction * N / S`` points (tiny shards would train poor constituents).
    """
    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    _check_sizes(n, shards, slices)
    if p.ndim != 1 or not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise EraseError("deletion probabilities must be a 1-D array of numbers in [0, 1]")
    order = np.argsort(-p, kind="stable")  # likeliest first
    m = max(1, int(min_shard_fraction * n / shards))
    cum = np.concatenate([[0.0], np.cumsum(np.log1p(-np.minimum(p[order], 1 - 1e-12)))])
    # dp[j]: best cost of cutting the first j sorted points into the shards placed so far.
    dp = np.full(n + 1, np.inf)
    dp[0] = 0.0
    back = np.zeros((shards, n + 1), dtype=np.int64)
    for s in range(shards):
        new = np.full(n + 1, np.inf)
        # shard s ends at j; the last shard must end at n; every shard keeps >= m points
        ends = [n] if s == shards - 1 else range((s + 1) * m, n - (shards - 1 - s) * m + 1)
        for j in ends:
            i = np.arange(s * m, j - m + 1)  # where shard s starts
            cost = dp[i] + (1.0 - np.exp(cum[j] - cum[i])) * (j - i)
            k = int(np.argmin(cost))
            new[j], back[s, j] = cost[k], i[k]
        dp = new
    bounds, j = [], n
    for s in range(shards - 1, 0, -1):
        j = int(back[s, j])
        bounds.append(j)
    bounds = bounds[::-1]
    shard_of = np.empty(n, dtype=np.int64)
    slice_of = np.empty(n, dtype=np.int64)
    for s, part in enumerate(np.split(order, bounds)):
        shard_of[part] = s
        # inside the shard: least likely first, so likely deletions sit in the last slices
        part_sorted = part[np.argsort(p[part], kind="stable")]
        _split_into_slices(part_sorted, slices, slice_of)
    return Assignment(shard_of, slice_of, shards, slices)


def expected_cost(assignment: Assignment, p: np.ndarray) -> dict[str, float]:
    """Expected shards hit and expected samples retrained under independent requests with prob. p."""
    p = np.asarray(p, dtype=np.float64)
    hit, cost = 0.0, 0.0
    for s in range(assignment.n_shards):
        ids = np.flatnonzero(assignment.shard == s)
        p_hit = 1.0 - float(np.prod(1.0 - p[ids]))
        hit += p_hit
        cost += p_hit * len(ids)
    return {"expected_shards_hit": hit, "expected_samples_in_hit_shards": cost}


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(1)[0])


def _key(ids: np.ndarray) -> str:
    return hashlib.sha256(":".join(map(str, ids.tolist())).encode()).hexdigest()


class _CheckpointStore:
    """state_dicts keyed by (shard, slice), with the hash of the ids they were trained on.

    A checkpoint is held in memory, in ``checkpoint_dir`` (written as it is produced), or in a
    saved SISA folder it was loaded from (read on demand; ``files`` maps it to that file).
    """

    def __init__(self, folder: str | None):
        self.folder = Path(folder) if folder else None
        self.mem: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.keys: dict[tuple[int, int], str] = {}
        self.files: dict[tuple[int, int], Path] = {}  # clean checkpoints of a loaded SISA folder

    def put(self, s: int, r: int, key: str, state: dict[str, torch.Tensor]) -> None:
        self.keys[(s, r)] = key
        self.files.pop((s, r), None)
        if self.folder is None:
            self.mem[(s, r)] = {k: v.detach().clone() for k, v in state.items()}
        else:
            save_tensors(self.folder / f"shard{s:03d}" / f"slice{r:03d}.safetensors", state, {"key": key})

    def key(self, s: int, r: int) -> str | None:
        return self.keys.get((s, r))

    def get(self, s: int, r: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if (s, r) in self.files:
            return load_file(str(self.files[(s, r)]))
        if self.folder is None:
            return {k: v.clone() for k, v in self.mem[(s, r)].items()}
        return load_file(str(self.folder / f"shard{s:03d}" / f"slice{r:03d}.safetensors"))


@dataclass
class ShardTask:
    """Everything one shard's (re)training needs: train slices ``start..R-1`` of shard ``shard``.

    ``steps`` holds, for each slice r from ``start`` on, the ids of the prefix (slices 0..r,
    surviving samples, ascending) and their data. ``init_state`` is the checkpoint after slice
    ``start - 1`` (None when ``start == 0``: a fresh model seeded by (seed, shard)).
    """

    shard: int
    start: int
    factory: Callable[[], nn.Module]
    seed: int
    train: TrainConfig
    init_state: dict[str, torch.Tensor] | None
    steps: list[tuple[int, np.ndarray, torch.Tensor, torch.Tensor]]
    threads: int = 0  # torch threads while training (0: leave as is)


@dataclass
class ShardResult:
    shard: int
    states: list[tuple[int, str, dict[str, torch.Tensor]]]  # (slice, key of its ids, state_dict)
    samples: int  # samples trained per epoch, summed over the steps


def train_shard(task: ShardTask) -> ShardResult:
    """Train one shard's slices (a pure function of the task: the executor seam)."""
    old = torch.get_num_threads()
    if task.threads and task.threads != old:
        torch.set_num_threads(task.threads)  # reductions split by thread count: fix it for equal bits everywhere
    try:
        model = seeded(task.factory, _seed(task.seed, task.shard))
        if task.init_state is not None:
            model.load_state_dict(task.init_state)
        states, count = [], 0
        for r, ids, X, y in task.steps:
            train_classifier(model, X, y, task.train, seed=_seed(task.seed, task.shard, r))
            states.append((r, _key(ids), {k: v.detach().clone() for k, v in model.state_dict().items()}))
            count += len(ids)
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
    return ShardResult(task.shard, states, count)


def serial_executor(tasks: Sequence[ShardTask]) -> list[ShardResult]:
    """Run the shard tasks one after the other in this process."""
    return [train_shard(t) for t in tasks]


class SISAModel:
    """An ensemble of shard models supporting exact deletion.

    ``SISAModel(factory, config, seed).fit(X, y)`` trains all shards; ``delete(ids)`` unlearns
    training samples (ids are positions in the X given to ``fit``) and returns statistics;
    ``predict_proba`` aggregates; ``save(dir)`` / ``SISAModel.load(dir)`` keep it on disk (the
    factory must then be an :class:`~erase.classifier.archs.Arch`, e.g. from ``mlp_factory``).
    """

    def __init__(self, factory: Callable[[], nn.Module], config: SISAConfig | None = None, seed: int = 0,
                 executor: str | Callable[[Sequence[ShardTask]], Sequence[ShardResult]] | None = None):
        self.factory = factory
        self.config = config or SISAConfig()
        if self.config.aggregation not in ("vote", "softmax"):
            raise EraseError(f"unknown SISA aggregation {self.config.aggregation!r}; use vote or softmax")
        self.seed = int(seed)
        if isinstance(executor, str):  # a name overrides the config's (e.g. to load a folder saved with ray)
            self.config = dataclasses.replace(self.config, executor=executor)
            executor = None
        cfg = self.config
        self.executor = executor or make_executor(cfg.executor, cfg.workers, cfg.ray_address, cfg.ray_num_cpus,
                                                  cfg.ray_connect_timeout)
        self.models: list[nn.Module | None] = []
        self.store = _CheckpointStore(self.config.checkpoint_dir)
        self.folder: Path | None = None  # the SISA folder this model was loaded from / saved to
        self.test = None  # (X_test, y_test) kept in a saved folder, if given
        self.rows: np.ndarray | None = None  # the user's row number of each training sample (None: identity)

    # ---- training -------------------------------------------------------------------------
    def fit(self, X, y, assignment: Assignment | None = None, deletion_probabilities=None) -> "SISAModel":
        cfg = self.config
        X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        n = len(y)
        if len(X) != n:
            raise EraseError(f"SISA got {len(X)} samples but {n} labels")
        if deletion_probabilities is not None and (assignment is not None or cfg.sharding != "distribution"):
            raise EraseError("deletion probabilities are only used by sharding=distribution (without a given assignment)")
        if assignment is None:
            if cfg.sharding == "distribution":
                if deletion_probabilities is None:
                    raise EraseError("distribution-aware sharding needs per-sample deletion probabilities")
                if len(deletion_probabilities) != n:
                    raise EraseError(f"got {len(deletion_probabilities)} deletion probabilities for {n} samples")
                assignment = distribution_aware_assignment(deletion_probabilities, cfg.shards, cfg.slices)
            elif cfg.sharding == "uniform":
                assignment = uniform_assignment(n, cfg.shards, cfg.slices, self.seed)
            else:
                raise EraseError(f"unknown SISA sharding {cfg.sharding!r}; use uniform or distribution")
        if len(assignment.shard) != n:
            raise EraseError(f"assignment covers {len(assignment.shard)} samples, the data has {n}")
        _check_sizes(n, assignment.n_shards, assignment.n_slices)
        self.X, self.y = X, y
        self.assignment = assignment
        self.alive = np.ones(n, dtype=bool)
        self.models = [None] * assignment.n_shards
        self.samples_trained = self._run({s: 0 for s in range(assignment.n_shards)})
        return self

    def _prefix_ids(self, s: int, r: int) -> np.ndarray:
        a = self.assignment
        return np.flatnonzero(self.alive & (a.shard == s) & (a.slice <= r))  # ascending ids

    def _task(self, s: int, start: int) -> ShardTask:
        cfg = self.config
        steps = []
        for r in range(start, self.assignment.n_slices):
            ids = self._prefix_ids(s, r)
            steps.append((r, ids, self.X[ids], self.y[ids]))
        return ShardTask(
            shard=s, start=start, factory=self.factory, seed=self.seed,
            train=TrainConfig(epochs=cfg.epochs_per_slice, lr=cfg.lr, batch_size=cfg.batch_size),
            init_state=self.store.get(s, start - 1) if start > 0 else None, steps=steps,
            threads=cfg.threads or torch.get_num_threads(),
        )

    def _run(self, starts: dict[int, int]) -> int:
        """(Re)train shard s from slice starts[s] for every s, through the executor; returns samples trained."""
        if not starts:
            return 0
        results = list(self.executor([self._task(s, start) for s, start in starts.items()]))
        if sorted(r.shard for r in results) != sorted(starts):
            raise EraseError("the SISA executor returned results for other shards than it was given")
        count = 0
        for res in results:
            for r, key, state in res.states:
                self.store.put(res.shard, r, key, state)
            count += res.samples
            self.models[res.shard] = self._final_model(res.shard, res.states[-1][2] if res.states else None)
        return count

    def _final_model(self, s: int, state: dict[str, torch.Tensor] | None) -> nn.Module | None:
        """The shard's constituent (its last checkpoint), or None when the shard has no sample left."""
        if not len(self._prefix_ids(s, self.assignment.n_slices - 1)):
            return None
        model = seeded(self.factory, _seed(self.seed, s))
        model.load_state_dict(state if state is not None else self.store.get(s, self.assignment.n_slices - 1))
        return model.eval()

    def _check_fitted(self) -> None:
        if not hasattr(self, "assignment"):
            raise EraseError("this SISAModel is not trained yet: call fit(X, y) first")

    # ---- persistence ----------------------------------------------------------------------
    def save(self, folder, X_test=None, y_test=None, overwrite: bool = False) -> Path:
        """Write the model to ``folder`` atomically (see :mod:`erase.classifier.sisa_store`)."""
        from erase.classifier.sisa_store import save_sisa

        return save_sisa(self, folder, X_test, y_test, overwrite=overwrite)

    @classmethod
    def load(cls, folder, executor=None) -> "SISAModel":
        """Reopen a folder written by :meth:`save` (checked: format version, files, hashes).

        ``executor``: a name (``serial``, ``process``, ``ray``) overriding the saved config's, or a callable.
        """
        from erase.classifier.sisa_store import load_sisa

        return load_sisa(folder, executor=executor)

    # ---- unlearning -----------------------------------------------------------------------
    def full_cost(self) -> int:
        """Samples a from-scratch SISA retrain of the current data would train (same unit as ``delete``)."""
        return int(sum(len(self._prefix_ids(s, r)) for s in range(self.assignment.n_shards) for r in range(self.assignment.n_slices)))

    def delete(self, ids) -> dict:
        """Unlearn training samples ``ids``; retrains only the affected shards from their last valid checkpoint."""
        from erase.classifier.data import validate_indices

        self._check_fitted()
        ids = validate_indices(ids, len(self.alive), allow_all=True)
        gone = ids[~self.alive[ids]]
        if gone.size:
            raise EraseError(f"sample {int(gone[0])} was already deleted from this SISA model")
        if self.alive.sum() - len(ids) <= 0:
            raise EraseError("the forget set covers every remaining training sample: nothing would remain")
        t0 = time.perf_counter()
        self.alive[ids] = False
        resumed_from = {}
        for s in range(self.assignment.n_shards):
            for r in range(self.assignment.n_slices):
                if self.store.key(s, r) != _key(self._prefix_ids(s, r)):
                    resumed_from[s] = r
                    break
        shards_hit = sorted(resumed_from)
        retrained = self._run(resumed_from)
        return {
            "deleted": int(len(ids)),
            "shards_retrained": shards_hit,
            "resumed_from_slice": resumed_from,
            "samples_retrained": int(retrained),
            "full_retrain_samples": self.full_cost(),
            "seconds": time.perf_counter() - t0,
        }

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, X) -> np.ndarray:
        self._check_fitted()
        X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        live = [m for m in self.models if m is not None]
        out = None
        for m in live:
            probs = torch.softmax(m(X), dim=1)
            out = torch.zeros_like(probs) if out is None else out
            if self.config.aggregation == "softmax":
                out += probs
            else:
                out[torch.arange(len(X)), probs.argmax(1)] += 1.0
        return (out / len(live)).numpy()

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    @property
    def deleted(self) -> np.ndarray:
        """Ids deleted so far (ascending)."""
        return np.flatnonzero(~self.alive)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All constituents' weights, prefixed ``shard{s}.``, for safetensors export."""
        out = {}
        for s, m in enumerate(self.models):
            if m is not None:
                out.update({f"shard{s}.{k}": v for k, v in m.state_dict().items()})
        return out
