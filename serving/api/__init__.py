"""The HTTP API: FastAPI routers, thin; logic lives in serving.generation and serving.adapters.

Vocabulary: "api" is the HTTP layer, a "route" is an A/B route (registry/routes.py, serving/routing.py,
`/admin/routes/NAME`), the Ray Serve front deployment is the "ingress" (serving/cluster/ingress.py).
"""
