"""The HTTP API and live dashboard: submit, watch and abort runs from anywhere.

    from orchestrator.api import create_app
    app = create_app(Settings(redis_url=...), api_keys={"secret-key": "tenant-a"})

Routes (all JSON unless noted; OpenAPI schema at /openapi.json, docs at /docs):

    POST /v1/runs                    submit a run (202: run id and session id)
    GET  /v1/runs                    list runs (?status=&agent=&limit=&offset=)
    GET  /v1/runs/{id}               one run: status, result, usage, timings
    POST /v1/runs/{id}/abort         abort a run (and its session's other turns)
    GET  /v1/runs/{id}/events        Server-Sent Events of one run, ending with its status
    GET  /v1/sessions/{id}/events    Server-Sent Events of a whole session (every run, fork);
                                     both take ?batch=true: entries arriving together as
                                     one message
    GET  /v1/runs/{id}/tree          the fork tree at a glance: one row per agent, totals
    GET  /v1/runs/{id}/lane          one agent's own entries (?view=compact: as a lane
                                     draws them), paged by ?after=&upto=&limit=
    GET  /v1/cluster                 workers, slots, queue depth, recent throughput
    GET  /healthz /readyz /metrics   process up, Redis reachable, Prometheus text
    GET  /                           the dashboard (runs, a run's overview, timeline and
                                     lanes, the cluster)
"""

from orchestrator.api.app import DEFAULT_MAX_BODY_BYTES, create_app
from orchestrator.api.auth import parse_api_key

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "parse_api_key"]
