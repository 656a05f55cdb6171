"""Where SISA's shard tasks run: here, in a local process pool, or as Ray tasks.

An executor maps a list of :class:`~erase.classifier.sisa.ShardTask` to the list of their
:class:`~erase.classifier.sisa.ShardResult`, in task order, each result being
``train_shard(task)``. Training a shard is a pure function of its task (seeded by seed, shard
and slice; torch's thread count fixed by the task), so every executor gives the same bits.

- ``serial``: one task after the other in this process (the default).
- ``process``: a pool of ``workers`` local processes (spawned, so nothing of this process's
  state leaks in); the tasks, and hence the model factory, are pickled.
- ``ray``: one ``ray.remote`` task per shard (``pip install 'erase[ray]'``). ``ray_address``
  None starts a local Ray instance (or attaches to one this process already started, or the
  one ``RAY_ADDRESS`` names); ``"auto"`` attaches to the cluster started on this machine with
  ``ray start``; ``"host:port"`` (the head's GCS port) or ``"ray://host:port"`` (Ray Client)
  connects to a cluster. If this process has already called ``ray.init``, that connection is
  used whatever ``ray_address`` says. The factory is serialised with cloudpickle.

Checkpoints are read and written by the driver (this process) only: a task carries the
checkpoint it resumes from and returns the state dicts it produced, so workers need no shared
folder. ``erase`` (and the factory's module) must be importable on every worker.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import socket
import weakref
from collections.abc import Sequence
from urllib.parse import urlsplit

from erase.errors import EraseError

EXECUTORS = ("serial", "process", "ray")
RAY_FIX = "pip install 'erase[ray]'"


def _train_shard(task):
    from erase.classifier.sisa import train_shard

    return train_shard(task)


def _train_pickled(blob: bytes) -> bytes:
    """A process-pool worker's job: tasks and results travel as plain pickles, tensors by value.

    (multiprocessing's own pickler would move every tensor to shared memory and pass one file
    descriptor per tensor, which runs out of descriptors for S x R state dicts of a large model.)
    """
    return pickle.dumps(_train_shard(pickle.loads(blob)), protocol=pickle.HIGHEST_PROTOCOL)


def _factory_name(factory) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def _check_picklable(tasks: Sequence, executor: str, dumps) -> None:
    if not tasks:
        return
    factory = tasks[0].factory
    try:
        dumps(factory)
    except Exception as e:  # pickle raises PicklingError, AttributeError or TypeError
        raise EraseError(
            f"SISA executor {executor!r} sends the model factory to other processes, but {_factory_name(factory)!r} "
            f"cannot be pickled ({type(e).__name__}); use a top-level function or class, or an Arch such as "
            f"mlp_factory(...), or executor serial"
        ) from None


class ProcessExecutor:
    """A pool of ``workers`` spawned local processes, started on first use and kept for later calls."""

    name = "process"

    def __init__(self, workers: int | None = None):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise EraseError(f"SISA option workers must be a whole number >= 1, got {workers!r}")
        self.workers = workers or os.cpu_count() or 1
        self._pool = None
        self._finalizer = None

    def _get_pool(self):
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def __call__(self, tasks: Sequence) -> list:
        from concurrent.futures.process import BrokenProcessPool

        tasks = list(tasks)
        if not tasks:
            return []
        _check_picklable(tasks, self.name, pickle.dumps)
        blobs = [pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL) for t in tasks]
        try:
            return [pickle.loads(b) for b in self._get_pool().map(_train_pickled, blobs)]
        except BrokenProcessPool:
            self.close()
            raise EraseError("a SISA worker process died: out of memory, killed, or it re-ran a script that lacks an "
                             "`if __name__ == '__main__':` guard (spawned workers import the main script); fix that, "
                             "or retry with fewer workers or executor serial") from None

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _load_ray():
    import ray

    return ray


def _import_ray():
    try:
        ray = _load_ray()
    except ImportError:
        raise EraseError(f"SISA executor 'ray' needs Ray, which is not installed here: {RAY_FIX}") from None
    return ray


def check_ray_address(address) -> None:
    """``None``, ``"auto"``, ``"host:port"`` or ``"ray://host:port"``; anything else is an error."""
    if address is None or address == "auto":
        return
    if not isinstance(address, str) or not _host_port(address):
        raise EraseError(f"SISA option ray_address must be null (a local Ray instance), 'auto', 'host:port' "
                         f"or 'ray://host:port', got {address!r}")


def _host_port(address: str) -> tuple[str, int] | None:
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "ray"):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _probe(address: str, timeout: float) -> None:
    """Fail fast, with the address in the message, when no Ray cluster answers there.

    A TCP connect catches a closed port or an unreachable host; then, since Ray's GCS and its
    client server speak gRPC, an HTTP/2 preface must be answered by a SETTINGS frame (a port
    held by something else would make ``ray.init`` retry for minutes). Skipped under TLS.
    """
    host, port = _host_port(address)
    hint = ("check that `ray start --head` runs there, the host and port (GCS port, default 6379; ray:// client "
            "port, default 10001) and the firewall, or set ray_address to null for a local instance")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise EraseError(f"no Ray cluster answers at {address} ({why}): {hint}") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        sock.close()
        return
    with sock:
        reply = b""
        try:
            sock.sendall(_HTTP2_PREFACE)
            while len(reply) < 9:
                chunk = sock.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
    if len(reply) < 9 or reply[3] != 0x04:
        raise EraseError(f"something listens at {address} but it does not answer as a Ray cluster (no gRPC reply "
                         f"within {timeout:g} s): {hint}")


class RayExecutor:
    """One ``ray.remote`` task per shard; at most ``workers`` in flight (None: as many as Ray schedules)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, num_cpus: float = 1.0,
                 connect_timeout: float = 10.0):
        check_ray_address(address)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise EraseError(f"SISA option workers must be a whole number >= 1, got {workers!r}")
        if not ray_available():
            raise EraseError(f"SISA executor 'ray' needs Ray, which is not installed here: {RAY_FIX} (or use executor serial or process)")
        self.address, self.workers, self.num_cpus, self.connect_timeout = address, workers, num_cpus, connect_timeout
        self._remote = None

    def _connect(self):
        ray = _import_ray()
        if ray.is_initialized():
            return ray
        if self.address not in (None, "auto"):
            _probe(self.address, self.connect_timeout)
        kwargs = {"include_dashboard": False, "logging_level": "WARNING", "configure_logging": True}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["num_cpus"] = self.workers  # a local instance: as many CPUs as workers (None: all)
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, TimeoutError, RuntimeError, OSError) as e:
            where = self.address or os.environ.get("RAY_ADDRESS") or "a local instance"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EraseError(f"could not connect to Ray at {where}: {first} (check that the cluster runs, or set "
                             f"ray_address to null for a local instance)") from None
        return ray

    def __call__(self, tasks: Sequence) -> list:
        tasks = list(tasks)
        if not tasks:
            return []
        ray = self._connect()
        _check_picklable(tasks, self.name, ray.cloudpickle.dumps)
        if self._remote is None:
            self._remote = ray.remote(num_cpus=self.num_cpus, max_retries=0)(_train_shard)
        limit = self.workers or len(tasks)
        results: list = [None] * len(tasks)
        pending: dict = {}
        nxt = 0
        try:
            while nxt < len(tasks) or pending:
                while nxt < len(tasks) and len(pending) < limit:
                    pending[self._remote.remote(tasks[nxt])] = nxt
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    results[pending.pop(ref)] = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone: nothing to stop
                    pass
            cause = getattr(e, "cause", None)
            if isinstance(cause, EraseError):
                raise EraseError(str(cause)) from None
            what = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]
            raise EraseError(f"a SISA shard task failed on Ray: {what.splitlines()[0]}") from None
        except ray.exceptions.RayError as e:
            raise EraseError(f"Ray failed while training SISA shards: {str(e).splitlines()[0]}") from None
        return results


def make_executor(name: str, workers: int | None = None, ray_address: str | None = None,
                  ray_num_cpus: float = 1.0, ray_connect_timeout: float = 10.0):
    """The executor called ``name`` (one of :data:`EXECUTORS`) with its settings."""
    if name == "serial":
        from erase.classifier.sisa import serial_executor

        return serial_executor
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(ray_address, workers, ray_num_cpus, ray_connect_timeout)
    raise EraseError(f"unknown SISA executor {name!r}; use {', '.join(EXECUTORS)}")


def projected_seconds(shards: int, workers: int, per_shard: float, overhead: float = 0.0) -> float:
    """Wall time of ``shards`` equal shard tasks on ``workers`` workers: ceil(S / W) rounds plus overhead."""
    return math.ceil(shards / workers) * per_shard + overhead
