"""Request bodies for create and update, exactly as huggingface_hub 2.4 sends them.

Create: ``{"name", "type", "provider": {"vendor", "region"}, "compute": {"accelerator",
"instanceType", "instanceSize", "scaling": {"minReplica", "maxReplica", "scaleToZeroTimeout"}},
"model": {"repository", "framework", "revision", "task", "image", "env", "secrets"}, "tags"}``.
Update: the same shape holding only the keys given.

`EndpointDrift` compares an existing endpoint with the creation keys a job sets, and turns the
differences into the `update(...)` that would apply them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from batchrun.endpoints.models import Endpoint
from batchrun.errors import JobError
from batchrun.job import EndpointSpec

# the constants (CREATE_DEFAULTS, ENDPOINT_TYPES, SCALING_METRICS) stay importable, unlisted,
# so that __all__ is sorted both ways (ruff's and the public API test's)
__all__ = ["CreateSpec", "EndpointDrift", "create_payload", "image_payload", "update_payload"]

ENDPOINT_TYPES = ("public", "protected", "authenticated", "private")
SCALING_METRICS = ("pendingRequests", "hardwareUsage")


@dataclass(slots=True, kw_only=True, frozen=True)
class CreateSpec:
    """What a new endpoint is made of: the one list of creation fields.

    A job's `[endpoint]` section becomes one with `from_job`, `batchrun endpoints create` builds
    one from its options, and `EndpointsClient.create` sends it (`create_payload`).

    Attributes:
        repository: the model repository, e.g. "gpt2" or "batchrun/echo".
        task: the Hugging Face task; left out of the body when None (the API rejects null).
        framework: e.g. "pytorch" or "custom".
        revision: the model revision.
        accelerator: e.g. "cpu" or "gpu".
        vendor: e.g. "aws".
        region: e.g. "us-east-1".
        instance_type: e.g. "intel-icl".
        instance_size: e.g. "x2".
        type: "public", "protected" (sent as "authenticated"), "authenticated" or "private".
        min_replica: 0 lets it scale to zero.
        max_replica: the autoscaling ceiling.
        scale_to_zero_timeout: idle minutes before scaling to zero.
        scaling_metric: "pendingRequests" or "hardwareUsage".
        scaling_threshold: the metric's scale-up threshold.
        custom_image: see `image_payload`.
        env: environment for the container (merged over the custom image's env).
        secrets: secret environment for the container.
        tags: tags for the endpoint.
    """

    repository: str
    task: str | None = None
    framework: str = "pytorch"
    revision: str | None = None
    accelerator: str = "cpu"
    vendor: str = "aws"
    region: str = "us-east-1"
    instance_type: str = "intel-icl"
    instance_size: str = "x2"
    type: str = "protected"
    min_replica: int = 1
    max_replica: int = 1
    scale_to_zero_timeout: int | None = None
    scaling_metric: str | None = None
    scaling_threshold: float | None = None
    custom_image: Mapping[str, Any] | None = None
    env: Mapping[str, str] | None = None
    secrets: Mapping[str, str] | None = None
    tags: list[str] | None = None

    @classmethod
    def from_job(cls, spec: EndpointSpec) -> CreateSpec:
        """The creation fields a job's `[endpoint]` sets (each of the same name).

        Raises:
            JobError: `[endpoint] repository` is not set.
        """
        if not spec.repository:
            raise JobError("[endpoint] repository is not set, so the endpoint cannot be created")
        values = {f.name: getattr(spec, f.name) for f in fields(cls) if hasattr(spec, f.name)}
        values["env"] = spec.env or None
        return cls(**values)


CREATE_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(CreateSpec) if f.default is not MISSING
}
"""Each creation field's default (what `batchrun endpoints create` shows)."""


def _api_type(value: str) -> str:
    kind = value.strip().lower()
    if kind not in ENDPOINT_TYPES:
        raise JobError(f"endpoint type must be one of {', '.join(ENDPOINT_TYPES)}, got {value!r}")
    return "authenticated" if kind == "protected" else kind


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def image_payload(custom_image: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """`model.image` for a `custom_image` argument, and the env it carried.

    A flat container description (it has a `url`) becomes ``{"custom": {...}}`` with its keys
    in the API's camelCase (`health_route` → `healthRoute`); its `env` moves to `model.env`,
    where the API reads it. A dict keyed by image variant (``{"tgi": {...}}``) is sent as is.

    Args:
        custom_image: ``{"url", "health_route", "port", "env", ...}``, a variant-keyed image,
            or None for Hugging Face's default image.

    Raises:
        JobError: the dict is empty or its env is not a string mapping.
    """
    if custom_image is None:
        return {"huggingface": {}}, {}
    if not custom_image:
        raise JobError("custom_image is empty: give at least its url")
    if "url" not in custom_image:
        return dict(custom_image), {}
    container: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key, value in custom_image.items():
        if key == "env":
            if not isinstance(value, Mapping):
                raise JobError(f"custom_image.env must be a table of strings, got {value!r}")
            env = {str(k): str(v) for k, v in value.items()}
        else:
            container[_camel(key)] = value
    return {"custom": container}, env


def _scaling(
    min_replica: int | None,
    max_replica: int | None,
    scale_to_zero_timeout: int | None,
    scaling_metric: str | None,
    scaling_threshold: float | None,
) -> dict[str, Any]:
    scaling: dict[str, Any] = {}
    if min_replica is not None:
        scaling["minReplica"] = min_replica
    if max_replica is not None:
        scaling["maxReplica"] = max_replica
    if scale_to_zero_timeout is not None:
        scaling["scaleToZeroTimeout"] = scale_to_zero_timeout
    if scaling_metric:
        if scaling_metric not in SCALING_METRICS:
            raise JobError(
                f"scaling metric must be one of {', '.join(SCALING_METRICS)}, got {scaling_metric!r}"
            )
        scaling["measure"] = {scaling_metric: scaling_threshold}
    return scaling


def create_payload(name: str, spec: CreateSpec) -> dict[str, Any]:
    """The body of `POST /endpoint/{namespace}` for a new endpoint `name`.

    Raises:
        JobError: a value the API would reject for sure (type, scaling metric, image).
    """
    image, image_env = image_payload(spec.custom_image)
    scaling = _scaling(
        spec.min_replica, spec.max_replica, None, spec.scaling_metric, spec.scaling_threshold
    )
    scaling["scaleToZeroTimeout"] = spec.scale_to_zero_timeout
    model: dict[str, Any] = {
        "repository": spec.repository,
        "framework": spec.framework,
        "revision": spec.revision,
        "image": image,
    }
    if spec.task is not None:
        model["task"] = spec.task
    merged_env = {**image_env, **dict(spec.env or {})}
    if merged_env:
        model["env"] = merged_env
    if spec.secrets:
        model["secrets"] = dict(spec.secrets)
    payload: dict[str, Any] = {
        "name": name,
        "type": _api_type(spec.type),
        "provider": {"vendor": spec.vendor, "region": spec.region},
        "compute": {
            "accelerator": spec.accelerator,
            "instanceType": spec.instance_type,
            "instanceSize": spec.instance_size,
            "scaling": scaling,
        },
        "model": model,
    }
    if spec.tags is not None:
        payload["tags"] = list(spec.tags)
    return payload


def update_payload(
    *,
    repository: str | None = None,
    framework: str | None = None,
    revision: str | None = None,
    task: str | None = None,
    accelerator: str | None = None,
    instance_size: str | None = None,
    instance_type: str | None = None,
    min_replica: int | None = None,
    max_replica: int | None = None,
    scale_to_zero_timeout: int | None = None,
    scaling_metric: str | None = None,
    scaling_threshold: float | None = None,
    custom_image: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    tags: list[str] | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    """The body of `PUT /endpoint/{namespace}/{name}`: only the keys given (None = not given).

    Raises:
        JobError: nothing to update, or a value the API would reject for sure.
    """
    compute: dict[str, Any] = {}
    model: dict[str, Any] = {}
    payload: dict[str, Any] = {}
    for key, value in (
        ("accelerator", accelerator),
        ("instanceSize", instance_size),
        ("instanceType", instance_type),
    ):
        if value is not None:
            compute[key] = value
    scaling = _scaling(
        min_replica, max_replica, scale_to_zero_timeout, scaling_metric, scaling_threshold
    )
    if scaling:
        compute["scaling"] = scaling
    for key, value in (
        ("repository", repository),
        ("framework", framework),
        ("revision", revision),
        ("task", task),
    ):
        if value is not None:
            model[key] = value
    image_env: dict[str, str] = {}
    if custom_image is not None:
        model["image"], image_env = image_payload(custom_image)
    if env is not None or image_env:
        model["env"] = {**image_env, **dict(env or {})}
    if secrets is not None:
        model["secrets"] = dict(secrets)
    if compute:
        payload["compute"] = compute
    if model:
        payload["model"] = model
    if tags is not None:
        payload["tags"] = list(tags)
    if type is not None:
        payload["type"] = _api_type(type)
    if not payload:
        raise JobError("update: nothing to change; give at least one field")
    return payload


_SPEC_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default_factory is MISSING else f.default_factory()
    for f in fields(EndpointSpec)
}
_NOT_UPDATABLE = ("vendor", "region")  # an update cannot move an endpoint
_SHA = re.compile(r"[0-9a-f]{40}")
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSW", re.IGNORECASE)


def _shown(value: Any) -> str:
    text = "<unset>" if value is None else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(slots=True, kw_only=True)
class EndpointDrift:
    """How an existing endpoint differs from the creation keys a job sets.

    Only the keys the job gives count (`Job.endpoint_keys`), never a default; `protected` is
    `authenticated`; `env` and `custom_image` are compared key by key for the keys the job
    gives; a key the endpoint does not report is not compared.

    Attributes:
        differences: one "key: job X, endpoint Y" per difference.
        warnings: differences that are probably not ones (a branch name against a commit sha).
        update: the `EndpointsClient.update` keyword arguments that apply the job's values.
        fixed: the differing keys an update cannot change (vendor, region).
    """

    differences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    update: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls, spec: EndpointSpec, endpoint: Endpoint, *, given: frozenset[str] | None = None
    ) -> EndpointDrift:
        """Compare `endpoint` with the creation keys of `spec`.

        Args:
            spec: the job's `[endpoint]`.
            endpoint: the endpoint as read.
            given: the keys the job file gave (`Job.endpoint_keys`); None (a job built in
                Python) counts the keys whose values differ from their defaults.

        Raises:
            JobError: the job's `type` or `custom_image` is not valid.
        """
        drift = cls()

        def gives(key: str) -> bool:
            if given is not None:
                return key in given
            return bool(getattr(spec, key) != _SPEC_DEFAULTS.get(key))

        simple = (f.name for f in fields(CreateSpec) if hasattr(spec, f.name))
        for key in simple:
            if key in ("env", "custom_image") or not gives(key):
                continue
            want, have = getattr(spec, key), getattr(endpoint, key, None)
            if have is None or want is None:
                continue  # the endpoint does not say, or the job asks for the default
            if key == "type":
                want, have = _api_type(want), "authenticated" if have == "protected" else have
            if want == have:
                continue
            if key == "revision" and bool(_SHA.fullmatch(want)) != bool(_SHA.fullmatch(have)):
                drift.warnings.append(
                    f"revision: job {want}, endpoint {have} (a branch against a commit: not checked)"
                )
                continue
            drift._add(key, want, have, getattr(spec, key))
        model = endpoint.raw.get("model")
        model = model if isinstance(model, dict) else {}
        image = spec.custom_image if gives("custom_image") else None
        if image is not None:
            drift._compare_image(image, model.get("image"))
        drift._compare_env(image, spec.env if gives("env") else {}, model.get("env"))
        return drift

    def _add(self, key: str, want: Any, have: Any, value: Any) -> None:
        self.differences.append(f"{key}: job {_shown(want)}, endpoint {_shown(have)}")
        if key in _NOT_UPDATABLE:
            self.fixed.append(key)
        else:
            self.update[key] = value

    def _compare_image(self, custom_image: Mapping[str, Any], have: Any) -> None:
        want, _ = image_payload(custom_image)
        have = have if isinstance(have, dict) else {}
        before = len(self.differences)
        for variant, settings in want.items():
            current = have.get(variant)
            if not isinstance(settings, dict) or not isinstance(current, dict):
                if settings != current:
                    self.differences.append(
                        f"custom_image: job {_shown(variant)}, endpoint {_shown(', '.join(have))}"
                    )
                continue
            for key, value in settings.items():
                if key != "env" and current.get(key) != value:
                    self.differences.append(
                        f"custom_image.{key}: job {_shown(value)}, "
                        f"endpoint {_shown(current.get(key))}"
                    )
        if len(self.differences) > before:
            self.update["custom_image"] = dict(custom_image)

    def _compare_env(
        self, custom_image: Mapping[str, Any] | None, env: Mapping[str, str], have: Any
    ) -> None:
        want = {**image_payload(custom_image)[1], **env} if custom_image else dict(env)
        have = {str(k): str(v) for k, v in have.items()} if isinstance(have, dict) else {}
        changed = False
        for key, value in want.items():
            if have.get(key) == value:
                continue
            changed = True
            if _SECRET_NAME.search(key):
                self.differences.append(f"env.{key}: differs (value not shown)")
            else:
                self.differences.append(
                    f"env.{key}: job {_shown(value)}, endpoint {_shown(have.get(key))}"
                )
        if changed or "custom_image" in self.update:
            self.update["env"] = {**have, **want}  # an update replaces the whole env
