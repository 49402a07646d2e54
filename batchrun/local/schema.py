"""Endpoint JSON as Hugging Face shapes it: create/update bodies in, endpoint objects out.

`config_from_create` validates a create body and returns the stored configuration;
`config_from_update` merges a partial update into one. A bad body raises
`UnprocessableError` naming the field (the API answers 422 with it). `render` turns a stored
record into the object the API returns, with `status.url`, replicas and timestamps.
`hardware_catalogue` is `GET /v2/provider/{namespace}`: Hugging Face's list prices, marked
simulated (local compute costs nothing; the prices let cost metering be exercised).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from batchrun.errors import UnprocessableError
from batchrun.local.store import EndpointRecord

__all__ = [
    "ENDPOINT_TYPES",
    "STATES",
    "config_from_create",
    "config_from_update",
    "hardware_catalogue",
    "render",
]

STATES = (
    "pending",
    "initializing",
    "updating",
    "updateFailed",
    "running",
    "paused",
    "failed",
    "scaledToZero",
)
# "protected" is the older name of "authenticated"; both need the service token.
ENDPOINT_TYPES = ("public", "protected", "authenticated", "private")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# States in which a worker listens on the endpoint's URL.
_URL_STATES = frozenset({"initializing", "running", "scaledToZero", "updating"})
_TARGET_STATES = frozenset({"pending", "initializing", "running", "updating"})


def _bad(field: str, problem: str) -> UnprocessableError:
    return UnprocessableError(f"Invalid body: field '{field}' {problem}", status=422)


def _table(body: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(path, f"must be an object, got {type(value).__name__}")
    return value


def _str(
    body: dict[str, Any], key: str, path: str, default: str | None = None, *, required: bool = False
) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _bad(path, "is required")
        return default
    if not isinstance(value, str) or not value:
        raise _bad(path, f"must be a non-empty string, got {value!r}")
    return value


def _int(
    body: dict[str, Any], key: str, path: str, default: int | None, *, minimum: int = 0
) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(path, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _str_map(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _bad(path, "must be an object of string values")
    return dict(value)


def _check(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a whole configuration (after create or a merged update) in place."""
    name = _str(config, "name", "name", required=True)
    assert name is not None
    if not _NAME.match(name):
        raise _bad(
            "name",
            "must be 1-32 lowercase letters, digits or '-', starting and ending with a "
            f"letter or digit, got {name!r}",
        )
    etype = _str(config, "type", "type", "protected")
    if etype not in ENDPOINT_TYPES:
        raise _bad("type", f"must be one of {', '.join(ENDPOINT_TYPES)}, got {etype!r}")
    config["type"] = etype
    provider = _table(config, "provider", "provider")
    config["provider"] = {
        "vendor": _str(provider, "vendor", "provider.vendor", "aws"),
        "region": _str(provider, "region", "provider.region", "us-east-1"),
    }
    compute = _table(config, "compute", "compute")
    scaling = _table(compute, "scaling", "compute.scaling")
    min_r = _int(scaling, "minReplica", "compute.scaling.minReplica", 1)
    max_r = _int(scaling, "maxReplica", "compute.scaling.maxReplica", 1, minimum=1)
    assert min_r is not None and max_r is not None
    if max_r < min_r:
        raise _bad("compute.scaling.maxReplica", f"must be >= minReplica ({min_r}), got {max_r}")
    new_scaling = dict(scaling)
    new_scaling.update(
        minReplica=min_r,
        maxReplica=max_r,
        scaleToZeroTimeout=_int(
            scaling, "scaleToZeroTimeout", "compute.scaling.scaleToZeroTimeout", None, minimum=1
        ),
    )
    config["compute"] = {
        **compute,
        "accelerator": _str(compute, "accelerator", "compute.accelerator", "cpu"),
        "instanceType": _str(compute, "instanceType", "compute.instanceType", "intel-icl"),
        "instanceSize": _str(compute, "instanceSize", "compute.instanceSize", "x2"),
        "scaling": new_scaling,
    }
    model = _table(config, "model", "model")
    image = model.get("image") or {"huggingface": {}}
    if not isinstance(image, dict) or len(image) != 1:
        raise _bad("model.image", 'must be an object with one key, e.g. {"huggingface": {}}')
    variant = next(iter(image.values()))
    if not isinstance(variant, dict):
        raise _bad("model.image", "must map the image kind to an object")
    env = _str_map(model.get("env"), "model.env")
    task = _str(model, "task", "model.task")
    repository = _str(model, "repository", "model.repository", required=True)
    assert repository is not None
    if task is None:
        task = "feature-extraction" if "minilm" in repository.lower() else "text-generation"
    config["model"] = {
        **{k: v for k, v in model.items() if k != "secrets"},
        "repository": repository,
        "framework": _str(model, "framework", "model.framework", "pytorch"),
        "revision": model.get("revision") if isinstance(model.get("revision"), str) else None,
        "task": task,
        "image": image,
        "env": env,
    }
    health = variant.get("healthRoute") or variant.get("health_route") or "/health"
    if not isinstance(health, str) or not health.startswith("/"):
        raise _bad("model.image.custom.healthRoute", f"must be a path, got {health!r}")
    config["healthRoute"] = health
    tags = config.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
    ):
        raise _bad("tags", "must be a list of strings")
    config["tags"] = list(tags or [])
    return config


def config_from_create(body: Any) -> dict[str, Any]:
    """The stored configuration for a create body.

    Secrets are accepted and dropped: the local service has nowhere safe to keep them.

    Raises:
        UnprocessableError: the body is not an object, or a field is missing or of the wrong type.
    """
    if not isinstance(body, dict):
        raise UnprocessableError("Invalid body: expected a JSON object", status=422)
    return _check(copy.deepcopy(body))


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        # env and image replace as a whole, as on Hugging Face.
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and key not in ("env", "image")
        ):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_from_update(config: dict[str, Any], body: Any) -> dict[str, Any]:
    """Merge a partial update (only the keys given) into a configuration.

    Raises:
        UnprocessableError: the body is not an object, tries to rename, or a merged field is bad.
    """
    if not isinstance(body, dict):
        raise UnprocessableError("Invalid body: expected a JSON object", status=422)
    if "name" in body and body["name"] != config["name"]:
        raise _bad("name", "cannot be changed by an update")
    merged = _merge(config, body)
    if "image" in body.get("model", {}) and "healthRoute" not in body:
        merged.pop("healthRoute", None)
    return _check(merged)


def render(
    record: EndpointRecord, *, user: str, replicas: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The endpoint object as the API returns it.

    `replicas` is (readyReplica, targetReplica) as the supervisor counts its workers; without
    it, one replica is assumed (ready when running).
    """
    cfg = record.config
    state = record.state
    url = (
        f"http://127.0.0.1:{record.port}"
        if record.port is not None and state in _URL_STATES
        else None
    )
    who = {"id": user, "name": user}
    if replicas is None:
        replicas = (1 if state == "running" else 0, 1 if state in _TARGET_STATES else 0)
    ready, target = replicas
    return {
        "name": record.name,
        "type": cfg["type"],
        "accountId": None,
        "healthRoute": cfg["healthRoute"],
        "provider": dict(cfg["provider"]),
        "compute": copy.deepcopy(cfg["compute"]),
        "model": copy.deepcopy(cfg["model"]),
        "tags": list(cfg.get("tags", [])),
        "status": {
            "state": state,
            "message": record.message,
            "url": url,
            "createdAt": record.created_at,
            "updatedAt": record.updated_at,
            "createdBy": who,
            "updatedBy": who,
            "private": None,
            "readyReplica": ready,
            "targetReplica": target,
        },
    }


# Hugging Face Inference Endpoints list prices (USD per replica-hour), as published in 2025.
_CPU = [
    ("x1", 1, 2, 0.033),
    ("x2", 2, 4, 0.067),
    ("x4", 4, 8, 0.134),
    ("x8", 8, 16, 0.268),
    ("x16", 16, 32, 0.536),
]
_GPU = [
    # instanceType, architecture, size, accelerators, GB per accelerator, price
    ("nvidia-t4", "Nvidia T4", "x1", 1, 16, 0.5),
    ("nvidia-t4", "Nvidia T4", "x4", 4, 16, 3.0),
    ("nvidia-l4", "Nvidia L4", "x1", 1, 24, 0.8),
    ("nvidia-l4", "Nvidia L4", "x4", 4, 24, 3.8),
    ("nvidia-a10g", "Nvidia A10G", "x1", 1, 24, 1.0),
    ("nvidia-a10g", "Nvidia A10G", "x4", 4, 24, 5.0),
    ("nvidia-l40s", "Nvidia L40S", "x1", 1, 48, 1.8),
    ("nvidia-l40s", "Nvidia L40S", "x4", 4, 48, 8.3),
    ("nvidia-a100", "Nvidia A100", "x1", 1, 80, 2.5),
    ("nvidia-a100", "Nvidia A100", "x4", 4, 80, 10.0),
    ("nvidia-h100", "Nvidia H100", "x1", 1, 80, 4.5),
    ("nvidia-h100", "Nvidia H100", "x8", 8, 80, 36.0),
]


def _computes(vendor: str, region: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for instance_type, arch in (
        ("intel-icl", "Intel Ice Lake"),
        ("intel-spr", "Intel Sapphire Rapids"),
    ):
        for size, cpus, mem, price in _CPU:
            out.append(
                {
                    "id": f"{vendor}-{region}-{instance_type}-{size}",
                    "accelerator": "cpu",
                    "instanceType": instance_type,
                    "instanceSize": size,
                    "architecture": arch,
                    "numAccelerators": cpus,
                    "numCpus": cpus,
                    "memoryGb": float(mem),
                    "gpuMemoryGb": None,
                    "pricePerHour": price,
                    "status": "available",
                    "quota": {"maxAccelerators": 64, "usedAccelerators": 0},
                    "simulated": True,
                }
            )
    for instance_type, arch, size, n, gb, price in _GPU:
        out.append(
            {
                "id": f"{vendor}-{region}-{instance_type}-{size}",
                "accelerator": "gpu",
                "instanceType": instance_type,
                "instanceSize": size,
                "architecture": arch,
                "numAccelerators": n,
                "numCpus": 8 * n,
                "memoryGb": float(32 * n),
                "gpuMemoryGb": gb * n,
                "pricePerHour": price,
                "status": "available",
                "quota": {"maxAccelerators": 8, "usedAccelerators": 0},
                "simulated": True,
            }
        )
    return out


def hardware_catalogue() -> dict[str, Any]:
    """`GET /v2/provider/{namespace}`: vendors, regions, computes with `pricePerHour`."""
    return {
        "simulated": True,
        "note": (
            "batchrun local service: models run on this machine at no cost; pricePerHour is "
            "Hugging Face's list price, simulated so cost metering and budgets can be exercised"
        ),
        "vendors": [
            {
                "name": "aws",
                "regions": [
                    {"name": region, "computes": _computes("aws", region)}
                    for region in ("us-east-1", "eu-west-1")
                ],
            }
        ],
    }
