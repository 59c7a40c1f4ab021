"""Celery settings of the workers on the encoding machines (the worker side of the executor
that EMBEDDING_EXECUTOR=celery selects in embedding_assets.definitions).

``dagster_celery.app`` imports this module by name when it is on the worker's PYTHONPATH:

    PYTHONPATH=deploy/celery:. celery -A dagster_celery.app worker -Q dagster \\
        -n worker1@%h --concurrency 1 --prefetch-multiplier 1

The broker and result backend come from the same variables the run side reads, so workers and
runs always meet on one queue. Each worker also needs DAGSTER_HOME (deploy/dagster.yaml),
DAGSTER_POSTGRES_URL and the EMBEDDING_* / AWS_* store variables: a step loads the code
location and the instance on the worker.
"""

import os

broker_url = os.environ["EMBEDDING_CELERY_BROKER"]
result_backend = os.environ.get("EMBEDDING_CELERY_BACKEND") or broker_url

# One shard at a time per worker process, and no prefetched second task: an idle worker
# takes the next step instead of one queued behind a long encode.
worker_prefetch_multiplier = 1
# A step that dies with its worker process (OOM, SIGKILL) fails with WorkerLostError and the
# run fails with it; it is not silently re-queued (a re-run is explicit and idempotent).
task_acks_late = False
task_reject_on_worker_lost = False
worker_hijack_root_logger = False
broker_connection_retry_on_startup = True
