"""Scale out on Ray Serve: one ingress in front of N engine replicas.

The ingress (`ingress.py`) runs the single server's own app (auth, validation, admission, alias and
A/B resolution, evidence, JSON/SSE encoding) on a `RemoteEngine` (`remote.py`) whose `generate()`
forwards through a DeploymentHandle with `multiplexed_model_id` = the resolved version (`name@N`,
`__base__` for the base model), so Ray Serve sends a request to a replica that already holds its
adapter. Each engine replica (`replica.py`) runs one engine and one AdapterManager; its
`@serve.multiplexed` loader loads (and pins) a version, Ray's LRU unloads it.
"""

BASE_MODEL_ID = "__base__"
"""The multiplexed model id of requests for the base model."""
