"""HTTP routes: thin; logic lives in serving.generation and serving.adapters."""
