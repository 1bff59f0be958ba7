"""The HTTP mapping of our exceptions (serving/errors.py): one class per meaning, registry errors
translated at the boundary with the right status and no server paths."""

from __future__ import annotations

import pytest

from registry import errors as reg
from serving import errors


@pytest.mark.parametrize(
    ("exc", "status", "retry"),
    [
        (reg.NotFoundError("no adapter named 'x'", path="/srv/registry/x"), 404, False),
        (reg.ConflictError("alias 'prod' is used by route 'support'", path="/srv/registry"), 409, False),
        (reg.InvalidReferenceError("malformed reference 'a@b@c'"), 400, False),
        (reg.IntegrityError("file changed", path="/srv/registry/x/1"), 400, False),
        (reg.StorageError("database is locked", path="/srv/registry/catalog.db"), 503, True),
        (reg.UnavailableError("catalog database postgresql://u:pw@h/db is unavailable"), 503, True),
    ],
)
def test_registry_errors_map_to_their_status_without_server_paths(
    exc: reg.RegistryError, status: int, retry: bool
) -> None:
    mapped = errors.from_registry(exc)
    body = mapped.envelope()["error"]
    assert mapped.status == status
    assert body["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert "/srv/" not in str(body["message"]) and "pw@" not in str(body["message"])
    assert ("Retry-After" in mapped.headers) is retry


def test_no_serving_class_mirrors_a_registry_class_by_name() -> None:
    def names(module: object) -> set[str]:
        return {n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Exception)}

    serving_own = {n for n in names(errors) if issubclass(getattr(errors, n), errors.ServingError)}
    assert not serving_own & names(reg), serving_own & names(reg)
    assert "ReferenceError_" not in names(reg)


def test_feedback_for_an_unknown_completion_is_a_404_on_the_id() -> None:
    exc = errors.CompletionNotFoundError("no routed or logged completion with id 'x'", param="id")
    assert exc.status == 404 and exc.envelope()["error"]["param"] == "id"
