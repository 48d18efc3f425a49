"""Prefect flows and the job runners of the affect product.

Importing this package (before Prefect) turns off the Prefect server's usage telemetry
(``PREFECT_SERVER_ANALYTICS_ENABLED``) unless the environment sets it: the ephemeral server that every one-off
``affect`` run starts would otherwise try to reach Prefect's telemetry service and, with no network (a cluster pod,
a laptop offline), print an ERROR line on every run. Nothing of the product talks to outside services unasked.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
