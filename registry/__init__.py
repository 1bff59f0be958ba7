"""Versioned adapter registry and base-model identity: the contract between trainer and serving."""
