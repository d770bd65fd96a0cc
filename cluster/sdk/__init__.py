"""The worker SDK: run your own functions on a net's work queues.

::

    from cluster import worker

    @worker(place="resize_queue", key=lambda job: job.id)
    def resize(job: Job) -> Resized: ...

and ``cpn worker run mymodule:resize --data DIR``. See docs/language.md, "Work queues,
declared results and leases", for the rules, and :mod:`cluster.sdk.runner` for how a
worker process runs.
"""

from cluster.sdk.context import LeaseContext, current
from cluster.sdk.spec import Output, WorkerEnv, WorkerSpec, to, worker

__all__ = ["LeaseContext", "Output", "WorkerEnv", "WorkerSpec", "current", "to", "worker"]
