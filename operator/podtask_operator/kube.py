"""A thin async Kubernetes client for the operator's hot path.

kubernetes_asyncio handles configuration (kubeconfig or in-cluster) and auth;
requests go through its ``call_api`` with ``_preload_content=False`` so objects
stay plain dicts (no model (de)serialisation on every pod and status write).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernetes_asyncio import client, config

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
GROUP_PATH = "/apis/podtask.dev/v1alpha1"
THROTTLE_RETRIES = 8


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        self.status = status
        self.body = body
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{status}: {message}")

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", "")) if isinstance(self.body, dict) else ""

    @property
    def is_quota(self) -> bool:
        return self.status == 403 and "exceeded quota" in str(self)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> Kube:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(config_file=kubeconfig)
        return cls(client.ApiClient())

    async def close(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API call; 429 and 503 (throttled, or storage still initialising right
        after a CRD was installed) are retried briefly, as client-go does."""
        for attempt in range(THROTTLE_RETRIES):
            try:
                return await self._request_once(method, path, body, query, content_type)
            except ApiError as error:
                if error.status not in (429, 503) or attempt == THROTTLE_RETRIES - 1:
                    raise
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise AssertionError("unreachable")

    async def _request_once(
        self,
        method: str,
        path: str,
        body: Any,
        query: dict[str, str] | None,
        content_type: str,
    ) -> dict[str, Any]:
        response = await self.api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        async with response:
            text = await response.text()
            status = response.status
        data: dict[str, Any]
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            data = {"message": text}
        if status >= 400:
            raise ApiError(status, data)
        return data

    # ------------------------------------------------------------------ helpers

    async def list(self, path: str, **query: str) -> dict[str, Any]:
        return await self.request("GET", path, query=query or None)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    async def delete(
        self,
        path: str,
        *,
        grace_seconds: int | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> None:
        """DELETE; 404 (already gone) is success.  Preconditions answer 409 when unmet."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        preconditions = {"uid": uid, "resourceVersion": resource_version}
        if any(preconditions.values()):
            options["preconditions"] = {k: v for k, v in preconditions.items() if v}
        options["propagationPolicy"] = "Background"
        try:
            await self.request("DELETE", path, options)
        except ApiError as error:
            if error.status != 404:
                raise


def runs_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"{GROUP_PATH}/namespaces/{namespace}/taskruns"
    return f"{path}/{name}/{sub}".rstrip("/") if name else path


def tasks_path(namespace: str, name: str = "") -> str:
    path = f"{GROUP_PATH}/namespaces/{namespace}/tasks"
    return f"{path}/{name}" if name else path


def pods_path(namespace: str, name: str = "") -> str:
    path = f"/api/v1/namespaces/{namespace}/pods"
    return f"{path}/{name}" if name else path


def secrets_path(namespace: str, name: str = "") -> str:
    path = f"/api/v1/namespaces/{namespace}/secrets"
    return f"{path}/{name}" if name else path
