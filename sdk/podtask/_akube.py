"""The Kubernetes API for the async client (``kubernetes_asyncio``), with typed errors.

The async twin of :mod:`podtask._kube`: the same calls, the same JSON dicts,
the same errors.  ``kubernetes_asyncio`` is imported on first use, with a clear
error when it is not installed.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from podtask.api.base import GROUP
from podtask.api.v1alpha1 import VERSION
from podtask.errors import ClusterUnreachableError, KubernetesApiError, PodtaskError

__all__ = ["AsyncBackend", "AsyncKubeBackend", "load_async_api_client"]

T = TypeVar("T")

REQUEST_TIMEOUT = 60.0
_THROTTLE_RETRIES = 6


class AsyncBackend(Protocol):
    """:class:`podtask._kube.Backend`, async."""

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]: ...

    async def list(
        self,
        plural: str,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str]: ...

    async def delete(
        self, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> None: ...

    async def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def replace_status(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    def watch(
        self,
        plural: str,
        namespace: str,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...

    async def secret_data(self, namespace: str, name: str) -> dict[str, str]: ...

    async def close(self) -> None: ...


def _modules() -> tuple[Any, Any, Any]:
    try:
        from kubernetes_asyncio import client, config, watch
    except ImportError as error:
        raise ClusterUnreachableError(
            "the async client needs kubernetes_asyncio: pip install kubernetes-asyncio"
        ) from error
    return client, config, watch


async def load_async_api_client(
    kubeconfig: str | Path | None = None, context: str | None = None
) -> Any:
    """A ``kubernetes_asyncio`` ApiClient: in-cluster credentials, else the kubeconfig."""
    client, config, _ = _modules()
    configuration = client.Configuration()
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    try:
        await config.load_kube_config(
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
    return client.ApiClient(configuration)


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
    client, _, _ = _modules()
    if isinstance(error, client.exceptions.ApiException):
        status = int(error.status or 0)
        if status == 0:
            return ClusterUnreachableError(f"{what}: {error.reason or error}")
        message = _message_of(error.body, str(error.reason or ""))
        return KubernetesApiError(f"{what}: {message}", status, str(error.reason or ""))
    import aiohttp

    if isinstance(error, aiohttp.ClientError | OSError | asyncio.TimeoutError):
        return ClusterUnreachableError(f"{what}: the Kubernetes API server did not answer: {error}")
    if isinstance(error, PodtaskError):
        return error
    return KubernetesApiError(f"{what}: {type(error).__name__}: {error}", 0)


class AsyncKubeBackend:
    """:class:`AsyncBackend` over ``kubernetes_asyncio``."""

    def __init__(self, api: Any) -> None:
        client, _, _ = _modules()
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        client, _, _ = _modules()
        for attempt in range(_THROTTLE_RETRIES + 1):
            try:
                return await call()
            except client.exceptions.ApiException as error:
                if error.status == 429 and attempt < _THROTTLE_RETRIES:
                    await asyncio.sleep(1.0)
                    continue
                raise api_error(error, what) from error
            except PodtaskError:
                raise
            except Exception as error:
                raise api_error(error, what) from error
        raise AssertionError("unreachable")  # pragma: no cover

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            f"create {plural} in {namespace}",
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return result

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            f"get {plural} {namespace}/{name}",
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return result

    async def list(
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
        while True:
            kwargs: dict[str, Any] = {"limit": 500, "_request_timeout": REQUEST_TIMEOUT}
            if label_selector:
                kwargs["label_selector"] = label_selector
            if field_selector:
                kwargs["field_selector"] = field_selector
            if token:
                kwargs["_continue"] = token

            def call(kw: dict[str, Any] = kwargs) -> Awaitable[dict[str, Any]]:
                if namespace is None:
                    return self.custom.list_cluster_custom_object(  # type: ignore[no-any-return]
                        GROUP, VERSION, plural, **kw
                    )
                return self.custom.list_namespaced_custom_object(  # type: ignore[no-any-return]
                    GROUP, VERSION, namespace, plural, **kw
                )

            page = await self._call(f"list {plural} in {namespace or 'all namespaces'}", call)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = meta.get("continue")
            if not token:
                return items, version

    async def delete(self, plural: str, namespace: str, name: str, uid: str | None = None) -> None:
        body = {"preconditions": {"uid": uid}} if uid else None
        await self._call(
            f"delete {plural} {namespace}/{name}",
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body=body, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    async def patch(
        self, plural: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            f"patch {plural} {namespace}/{name}",
            lambda: self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                patch,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        return result

    async def replace_status(
        self, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            f"replace {plural} {namespace}/{name} status",
            lambda: self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return result

    async def watch(
        self,
        plural: str,
        namespace: str,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        _, _, watch_module = _modules()
        kwargs: dict[str, Any] = {"timeout_seconds": timeout_seconds}
        if field_selector:
            kwargs["field_selector"] = field_selector
        if resource_version:
            kwargs["resource_version"] = resource_version
            kwargs["allow_watch_bookmarks"] = True
        what = f"watch {plural} in {namespace}"
        watch = watch_module.Watch()
        try:
            async with watch.stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural,
                **kwargs,
            ) as stream:
                async for event in stream:
                    kind = str(event.get("type"))
                    obj = event.get("raw_object") or event.get("object") or {}
                    if kind == "ERROR":
                        raise KubernetesApiError(
                            f"{what}: {obj.get('message', '')}", int(obj.get("code") or 500)
                        )
                    yield kind, obj
        except PodtaskError:
            raise
        except Exception as error:
            raise api_error(error, what) from error
        finally:
            watch.stop()

    async def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        secret = await self._call(
            f"read Secret {namespace}/{name}",
            lambda: self.core.read_namespaced_secret(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return dict(secret.data or {})

    async def close(self) -> None:
        await self.api.close()
