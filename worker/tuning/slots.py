"""The tenant's share of the training workers, as a trial takes and gives it back.

TODO(#19, branch ``quota``): take a slot of the per-tenant semaphore
(``RECSYS_TENANT_CONCURRENCY``, the one ``worker/runner.py``'s training task
takes) here, so that one tenant's search never holds every worker while another
tenant waits. Until it lands, every slot is granted.
"""

from __future__ import annotations

from worker.context import WorkerServices

#: Seconds before a trial that found no free slot is tried again (well under the
#: visibility timeout; the task is retried, it never sleeps on a worker).
SLOT_RETRY_SECONDS = 5


def take_slot(svc: WorkerServices, tenant: str, holder: str) -> bool:
    """Take one of ``tenant``'s training slots for ``holder``; False when none is free."""
    del svc, tenant, holder  # stub: always granted until the quotas issue lands
    return True


def release_slot(svc: WorkerServices, tenant: str, holder: str) -> None:
    """Give back the slot ``holder`` took."""
    del svc, tenant, holder
