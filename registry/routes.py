"""A/B routes: a public model name mapped to weighted adapter versions, stored in the catalog.

Routes are catalog state (`Catalog.route/routes/put_route/delete_route`), so the CLI changes
them while servers run and every server (several replicas included) sees the change through the
change counter. This module owns what a route means (validation, history, promotion); the
catalog owns how it is stored.

In this project "route" means only this: an A/B route (`platform ab`, `/admin/routes/NAME`, the
catalog's `routes` table, the `route` column of evidence rows). The HTTP layer is serving/api/
(FastAPI routers) and the Ray Serve front deployment is the ingress (serving/cluster/ingress.py).
The name is kept because it is stored (table and column names, evidence already recorded) and is
the word of the CLI and the admin API; renaming it would need a migration and break clients.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from registry.errors import ConflictError, NotFoundError, RegistryError
from registry.refs import check_name

if TYPE_CHECKING:
    from registry.store import Registry


@dataclass(frozen=True)
class Variant:
    ref: str
    """A pinned version, `name@N`."""
    weight: float


@dataclass(frozen=True)
class Route:
    name: str
    variants: tuple[Variant, ...]
    shadow: str | None = None
    """Optional candidate version that gets a copy of a sampled share of requests (never returned)."""
    shadow_share: float = 0.0
    created: float = 0.0
    updated: float = 0.0
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    """Earlier weight settings, oldest first, with the time they ended."""

    @property
    def total(self) -> float:
        return sum(v.weight for v in self.variants)

    def spec(self) -> dict[str, Any]:
        return {
            "variants": [asdict(v) for v in self.variants],
            "shadow": self.shadow,
            "shadow_share": self.shadow_share,
            "created": self.created,
            "history": list(self.history),
        }

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any], updated: float) -> Route:
        """The inverse of `spec()` (the catalog stores the spec and the update time)."""
        return cls(
            name=name,
            variants=tuple(Variant(v["ref"], float(v["weight"])) for v in spec["variants"]),
            shadow=spec.get("shadow"),
            shadow_share=float(spec.get("shadow_share", 0.0)),
            created=float(spec.get("created", updated)),
            updated=updated,
            history=tuple(spec.get("history", [])),
        )

    def points_at(self, ref: str) -> bool:
        """Whether a variant is the version `ref` (`name@N`)."""
        return ref in {v.ref for v in self.variants}


def parse_variant(text: str) -> tuple[str, float]:
    """`support@3=90` -> ("support@3", 90.0)."""
    ref, sep, weight = text.rpartition("=")
    if not sep or not ref:
        raise RegistryError(f"variant {text!r}: expected REF=WEIGHT, e.g. support@3=90")
    try:
        value = float(weight)
    except ValueError:
        raise RegistryError(f"variant {text!r}: weight {weight!r} is not a number") from None
    return ref, value


def _validate(
    reg: Registry, name: str, variants: list[tuple[str, float]], shadow: str | None, shadow_share: float
) -> tuple[tuple[Variant, ...], str | None]:
    check_name(name, "route name")
    if not variants:
        raise RegistryError(f"route {name!r}: give at least one --variant REF=WEIGHT")
    if any(w < 0 for _, w in variants) or sum(w for _, w in variants) <= 0:
        raise RegistryError(f"route {name!r}: weights must be >= 0 and sum to a positive number")
    if not 0 <= shadow_share <= 1:
        raise RegistryError(f"route {name!r}: shadow share must be in [0, 1]")
    resolved = []
    for ref, weight in variants:
        v = reg.get(ref, verify_files=False)
        resolved.append((v, weight))
    refs = [v.ref for v, _ in resolved]
    if len(set(refs)) != len(refs):
        raise RegistryError(f"route {name!r}: a version appears twice ({', '.join(refs)})")
    shadow_v = reg.get(shadow, verify_files=False) if shadow else None
    everyone = [v for v, _ in resolved] + ([shadow_v] if shadow_v else [])
    bases = {v.base_sha256 for v in everyone}
    if len(bases) > 1:
        detail = ", ".join(f"{v.ref} on {v.base_model} ({v.base_sha256[:12]})" for v in everyone)
        raise RegistryError(f"route {name!r}: variants are on different base models: {detail}")
    adapter_names = {v.name for v in reg.list_versions()}
    if name in adapter_names and any(v.name != name for v in everyone):
        raise ConflictError(
            f"route {name!r} would hide the adapter named {name!r}: a route may take an adapter's name only "
            "when every variant is a version of that adapter"
        )
    return tuple(Variant(v.ref, w) for v, w in resolved), (shadow_v.ref if shadow_v else None)


def get_route(reg: Registry, name: str) -> Route:
    route = reg.catalog.route(check_name(name, "route name"))
    if route is None:
        raise NotFoundError(f"no A/B route named {name!r}")
    return route


def list_routes(reg: Registry) -> list[Route]:
    return reg.catalog.routes()


def start_route(
    reg: Registry,
    name: str,
    variants: list[tuple[str, float]],
    shadow: str | None = None,
    shadow_share: float = 0.0,
) -> Route:
    checked, shadow_ref = _validate(reg, name, variants, shadow, shadow_share)
    now = time.time()
    route = Route(name, checked, shadow_ref, shadow_share if shadow_ref else 0.0, now, now)
    with reg.catalog.write() as tx:
        if tx.route(name) is not None:
            raise ConflictError(
                f"A/B route {name!r} already exists: change it with `platform ab set` or stop it first"
            )
        tx.put_route(route)
    return route


def set_weights(
    reg: Registry,
    name: str,
    variants: list[tuple[str, float]],
    shadow: str | None = None,
    shadow_share: float | None = None,
) -> Route:
    old = get_route(reg, name)
    share = old.shadow_share if shadow_share is None else shadow_share
    checked, shadow_ref = _validate(reg, name, variants, shadow or old.shadow, share)
    now = time.time()
    history = (*old.history, {"variants": [asdict(v) for v in old.variants], "until": now})
    route = Route(name, checked, shadow_ref, share if shadow_ref else 0.0, old.created, now, history)
    with reg.catalog.write() as tx:
        if tx.route(name) is None:
            raise NotFoundError(f"no A/B route named {name!r}")
        tx.put_route(route)
    return route


def stop_route(reg: Registry, name: str) -> Route:
    route = get_route(reg, name)
    with reg.catalog.write() as tx:
        tx.delete_route(name)
    return route


def promote(reg: Registry, name: str, ref: str, alias: str = "prod") -> str:
    """Point `<adapter>:<alias>` at `ref` and end the route, in one transaction."""
    route = get_route(reg, name)
    v = reg.get(ref, verify_files=False)
    if v.ref not in {x.ref for x in route.variants} | {route.shadow}:
        raise RegistryError(
            f"{v.ref} is not a variant of route {name!r} ({', '.join(x.ref for x in route.variants)})"
        )
    with reg.catalog.write() as tx:
        tx.set_alias(v.name, alias, v.version)
        tx.delete_route(name)
    return f"{v.name}:{alias}"
