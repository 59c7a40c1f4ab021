"""Multi-process / multi-GPU encoding pool that reports a dead worker instead of hanging.

``SentenceTransformer.start_multi_process_pool`` starts an :class:`EncodePool`; ``encode(...,
pool=pool)`` spreads one call over its workers:

    prepare (tokenize once) in the parent -> order the whole call by token length -> cut into
    chunks of whole batches (planning) -> send them to workers with room (dispatch) -> each
    worker runs ``forward_tokens`` on its chunk (worker) -> scatter back to the caller's
    order (``batching.Gather``)

The package never imports the model: the parent hands workers a picklable recipe that loads
itself (``model.ModelRecipe``), and talks to the model through :class:`EncodingModel`.

How it stays trustworthy:

* Workers are ``spawn``-ed (CUDA-safe, the same on every OS) and load the model once, from its
  local snapshot folder, never receiving it per chunk. Each worker checks that the weights it
  loaded are byte-identical to the parent's; a model changed in memory (or built from
  ``modules=``) is saved once to a temporary folder that the pool removes when it closes.
* Each worker has its own pipes, so a worker killed by the OS cannot hold a lock the others
  need. A collector thread in the parent waits on the result pipes and on the processes'
  sentinels together: a death is noticed at once, reported with the device, and the pool is
  marked broken (its other workers are stopped; further calls raise). A worker that holds
  work and falls silent (no result, no heartbeat) for the stall timeout, e.g. one stopped with
  SIGSTOP, is killed and reported the same way (``WorkerStalledError``; ``stall_timeout_s``
  or ``$EMBEDDING_POOL_STALL_TIMEOUT``, default 30 s).
* Results are routed by task id to the call that submitted them, so threads sharing a pool
  each get their own results. A worker's exception comes back with its traceback.
* ``close()`` always succeeds: it stops the workers, terminates and then kills any that do not
  exit, and joins them. A pool dropped without ``close()`` is closed when it is garbage
  collected or when the interpreter exits.

Example::

    >>> from embedding_core import SentenceTransformer
    >>> model = SentenceTransformer("all-MiniLM-L6-v2")
    >>> if __name__ == "__main__":  # spawn re-imports the main script in each worker
    ...     with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
    ...         embeddings = model.encode(["first text", "second text"], pool=pool)
"""

from embedding_core.pool.encode_pool import EncodePool, EncodingModel, encode_with_pool
from embedding_core.pool.errors import (
    PoolClosedError,
    PoolError,
    PoolStartError,
    PoolWorkerError,
    WorkerDiedError,
    WorkerStalledError,
)
from embedding_core.pool.planning import (
    CHUNKS_PER_WORKER,
    MAX_CHUNK_TEXTS,
    WorkerSpec,
    available_cores,
    plan_chunks,
    plan_workers,
)

__all__ = [
    "CHUNKS_PER_WORKER", "MAX_CHUNK_TEXTS", "EncodePool", "EncodingModel", "PoolClosedError",
    "PoolError", "PoolStartError", "PoolWorkerError", "WorkerDiedError", "WorkerSpec", "WorkerStalledError",
    "available_cores", "encode_with_pool", "plan_chunks", "plan_workers",
]
