"""The production loop: composes trainer, registry and serving.experiments (which never import each other)."""
