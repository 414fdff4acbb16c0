"""The Kubernetes API as the SDK uses it (official client, sync), with typed errors.

Every call returns plain JSON dicts (camelCase, as the API server sends them)
and raises only podtask errors: :class:`~podtask.errors.KubernetesApiError`
for an answer that is an error, :class:`~podtask.errors.ClusterUnreachableError`
when no answer came, or no credentials were found.  ``Backend`` is the
protocol the clients depend on, so unit tests substitute an in-memory API.
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from podtask.api.base import GROUP
from podtask.api.v1alpha1 import VERSION
from podtask.errors import ClusterUnreachableError, KubernetesApiError, PodtaskError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["Backend", "KubeBackend", "api_error", "load_api_client", "namespace_from_config"]

T = TypeVar("T")

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Connect fast (an unreachable cluster should fail in seconds); reads may be slow.
REQUEST_TIMEOUT = (5.0, 60.0)
_THROTTLE_RETRIES = 6


class Backend(Protocol):
    """The API calls the SDK makes; objects are JSON dicts."""

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]: ...

    def list(
        self,
        plural: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """The objects and the list's resourceVersion (to watch from)."""
        ...

    def delete(self, plural: str, namespace: str, name: str, uid: str | None = None) -> None: ...

    def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]: ...

    def replace(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    def replace_status(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    def watch(
        self,
        plural: str,
        namespace: str,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) until the server ends the watch."""
        ...

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """The Secret's data, base64-encoded as stored."""
        ...

    def config_map_data(self, namespace: str, name: str) -> dict[str, str]: ...

    def list_pods(
        self, namespace: str, label_selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], str]: ...

    def watch_pods(
        self,
        namespace: str,
        *,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None: ...

    def pod_log(
        self, namespace: str, name: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> Iterator[str]: ...


# --------------------------------------------------------------------------- config


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError as error:  # pragma: no cover - a dependency of podtask
        raise ClusterUnreachableError(
            "the kubernetes package is not installed: pip install podtask"
        ) from error
    return kubernetes


def load_api_client(kubeconfig: str | Path | None = None, context: str | None = None) -> ApiClient:
    """A client for the cluster: in-cluster credentials, else the kubeconfig.

    An explicit ``kubeconfig`` or ``context`` skips the in-cluster attempt.
    Raises :class:`ClusterUnreachableError` when neither yields credentials.
    """
    kubernetes = _kubernetes()
    client, config = kubernetes.client, kubernetes.config
    configuration = client.Configuration()
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)  # type: ignore[no-any-return]
        except config.ConfigException:
            pass
    try:
        config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=configuration,
        )
    except (config.ConfigException, OSError, ValueError, TypeError) as error:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClusterUnreachableError(
            f"no Kubernetes credentials: not in a cluster, and the kubeconfig ({where}) "
            f"gives none: {error}"
        ) from error
    return client.ApiClient(configuration)  # type: ignore[no-any-return]


def namespace_from_config(kubeconfig: str | Path | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's context, the pod's own in a cluster, else default."""
    if kubeconfig is None and context is None and IN_CLUSTER_NAMESPACE_FILE.is_file():
        try:
            return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or "default"
        except OSError:
            pass
    config = _kubernetes().config
    try:
        contexts, active = config.list_kube_config_contexts(
            str(kubeconfig) if kubeconfig is not None else None
        )
    except (config.ConfigException, OSError, ValueError, TypeError):
        return "default"
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), active)
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


# --------------------------------------------------------------------------- errors


def _message_of(body: Any, fallback: str) -> str:
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body:
        try:
            parsed = json.loads(body)
        except ValueError:
            return body[:500]
        if isinstance(parsed, dict) and parsed.get("message"):
            return str(parsed["message"])
    return fallback


def api_error(error: BaseException, what: str) -> PodtaskError:
    """A podtask error for a failed call of the official client."""
    kubernetes = _kubernetes()
    if isinstance(error, kubernetes.client.exceptions.ApiException):
        status = int(error.status or 0)
        if status == 0:
            return ClusterUnreachableError(f"{what}: {error.reason or error}")
        message = _message_of(error.body, str(error.reason or ""))
        return KubernetesApiError(f"{what}: {message}", status, str(error.reason or ""))
    import urllib3.exceptions

    if isinstance(error, urllib3.exceptions.HTTPError | OSError):
        return ClusterUnreachableError(f"{what}: the Kubernetes API server did not answer: {error}")
    if isinstance(error, PodtaskError):
        return error
    return KubernetesApiError(f"{what}: {type(error).__name__}: {error}", 0)


def _retry_after(error: BaseException) -> float | None:
    headers = getattr(error, "headers", None) or {}
    try:
        return float(headers.get("Retry-After", "1"))
    except (TypeError, ValueError):
        return 1.0


# --------------------------------------------------------------------------- the backend


class KubeBackend:
    """:class:`Backend` over the official ``kubernetes`` client."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self._custom: Any = None
        self._core: Any = None

    # Made on first use: the core API's module is large and most commands never need it.
    @property
    def custom(self) -> Any:
        if self._custom is None:
            self._custom = _kubernetes().client.CustomObjectsApi(self.api)
        return self._custom

    @property
    def core(self) -> Any:
        if self._core is None:
            self._core = _kubernetes().client.CoreV1Api(self.api)
        return self._core

    def _call(self, what: str, call: Callable[[], T]) -> T:
        kubernetes = _kubernetes()
        for attempt in range(_THROTTLE_RETRIES + 1):
            try:
                return call()
            except kubernetes.client.exceptions.ApiException as error:
                # 429 means "not processed, come back later": retrying is always safe.
                if error.status == 429 and attempt < _THROTTLE_RETRIES:
                    time.sleep(min(_retry_after(error) or 1.0, 5.0))
                    continue
                raise api_error(error, what) from error
            except PodtaskError:
                raise
            except Exception as error:
                raise api_error(error, what) from error
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        data = response.data if hasattr(response, "data") else response
        result: dict[str, Any] = json.loads(data)
        return result

    # ------------------------------------------------------------------ custom objects

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            f"create {plural} in {namespace}",
            lambda: self._json(
                self.custom.create_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    body,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            ),
        )

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"get {plural} {namespace}/{name}",
            lambda: self._json(
                self.custom.get_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            ),
        )

    def list(
        self,
        plural: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        items: builtins.list[dict[str, Any]] = []
        token: str | None = None
        version = ""
        where = namespace or "all namespaces"
        while True:
            kwargs: dict[str, Any] = {
                "limit": 500,
                "_preload_content": False,
                "_request_timeout": REQUEST_TIMEOUT,
            }
            if label_selector:
                kwargs["label_selector"] = label_selector
            if field_selector:
                kwargs["field_selector"] = field_selector
            if token:
                kwargs["_continue"] = token
            if namespace is None:
                page = self._call(
                    f"list {plural} in {where}",
                    lambda kw=kwargs: self._json(  # type: ignore[misc]
                        self.custom.list_cluster_custom_object(GROUP, VERSION, plural, **kw)
                    ),
                )
            else:
                page = self._call(
                    f"list {plural} in {where}",
                    lambda kw=kwargs: self._json(  # type: ignore[misc]
                        self.custom.list_namespaced_custom_object(
                            GROUP, VERSION, namespace, plural, **kw
                        )
                    ),
                )
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = meta.get("continue")
            if not token:
                return items, version

    def delete(self, plural: str, namespace: str, name: str, uid: str | None = None) -> None:
        body = {"preconditions": {"uid": uid}} if uid else None
        self._call(
            f"delete {plural} {namespace}/{name}",
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body=body,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )

    def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        return self._call(
            f"patch {plural} {namespace}/{name}",
            lambda: self._json(
                self.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    patch,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            ),
        )

    def replace(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._call(
            f"replace {plural} {namespace}/{name}",
            lambda: self._json(
                self.custom.replace_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    body,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            ),
        )

    def replace_status(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return self._call(
            f"replace {plural} {namespace}/{name} status",
            lambda: self._json(
                self.custom.replace_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    body,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            ),
        )

    def watch(
        self,
        plural: str,
        namespace: str,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        kwargs: dict[str, Any] = {"timeout_seconds": timeout_seconds}
        if field_selector:
            kwargs["field_selector"] = field_selector
        if label_selector:
            kwargs["label_selector"] = label_selector
        if resource_version:
            kwargs["resource_version"] = resource_version
            kwargs["allow_watch_bookmarks"] = True
        yield from self._stream(
            f"watch {plural} in {namespace}",
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            **kwargs,
        )

    def _stream(
        self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        watch = _kubernetes().watch.Watch()
        try:
            for event in watch.stream(func, *args, deserialize=False, **kwargs):
                kind = str(event.get("type"))
                obj = event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise KubernetesApiError(f"{what}: {obj.get('message', '')}", code)
                yield kind, obj
        except PodtaskError:
            raise
        except Exception as error:
            raise api_error(error, what) from error
        finally:
            watch.stop()

    # ------------------------------------------------------------------ core objects

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        secret = self._call(
            f"read Secret {namespace}/{name}",
            lambda: self._json(
                self.core.read_namespaced_secret(
                    name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            ),
        )
        return dict(secret.get("data") or {})

    def config_map_data(self, namespace: str, name: str) -> dict[str, str]:
        config_map = self._call(
            f"read ConfigMap {namespace}/{name}",
            lambda: self._json(
                self.core.read_namespaced_config_map(
                    name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            ),
        )
        return dict(config_map.get("data") or {})

    def list_pods(
        self, namespace: str, label_selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
        if label_selector:
            kwargs["label_selector"] = label_selector
        body = self._call(
            f"list pods in {namespace}",
            lambda: self._json(self.core.list_namespaced_pod(namespace, **kwargs)),
        )
        return list(body.get("items") or []), str(
            (body.get("metadata") or {}).get("resourceVersion") or ""
        )

    def watch_pods(
        self,
        namespace: str,
        *,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        kwargs: dict[str, Any] = {"timeout_seconds": timeout_seconds}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if resource_version:
            kwargs["resource_version"] = resource_version
        yield from self._stream(
            f"watch pods in {namespace}", self.core.list_namespaced_pod, namespace, **kwargs
        )

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"get pod {namespace}/{name}",
            lambda: self._json(
                self.core.read_namespaced_pod(
                    name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            ),
        )

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
        if grace_seconds is not None:
            kwargs["grace_period_seconds"] = grace_seconds
        self._call(
            f"delete pod {namespace}/{name}",
            lambda: self.core.delete_namespaced_pod(name, namespace, **kwargs),
        )

    def pod_log(
        self, namespace: str, name: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> Iterator[str]:
        kwargs: dict[str, Any] = {"follow": follow, "_preload_content": False}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        if not follow:
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        response = self._call(
            f"read the log of pod {namespace}/{name}",
            lambda: self.core.read_namespaced_pod_log(name, namespace, **kwargs),
        )
        try:
            pending = b""
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        except PodtaskError:
            raise
        except Exception as error:
            raise api_error(error, f"read the log of pod {namespace}/{name}") from error
        finally:
            response.release_conn()
