"""KServe's Python SDK REST client (kserve.InferenceRESTClient, protocol v2) against the
gateway, as its users write it: TLS verified against our CA, credentials in headers,
JSON and binary tensors, named outputs."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
from collections.abc import Awaitable
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def _plain(array: np.ndarray) -> list[Any]:
    return [x.decode() if isinstance(x, bytes) else x for x in array.reshape(-1).tolist()]


async def attempt(call: Awaitable[Any]) -> dict[str, Any]:
    try:
        return {"value": await call}
    except httpx.HTTPStatusError as exc:
        return {"status": exc.response.status_code, "message": str(exc), "type": "HTTPStatusError"}


def iris_request(rows: np.ndarray, *, binary: bool) -> InferRequest:
    tensor = InferInput("measurements", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        RequestedOutput("predict", {"binary_data": binary}),
        RequestedOutput("predict_proba", {"binary_data": binary}),
    ]
    return InferRequest("iris", [tensor], request_id="k-1", request_outputs=outputs)


async def infer_iris(
    client: InferenceRESTClient,
    base: str,
    headers: dict[str, str],
    rows: np.ndarray,
    *,
    binary: bool,
    model: str = "iris",
) -> dict[str, Any]:
    response = await client.infer(
        base, iris_request(rows, binary=binary), model_name=model, headers=dict(headers)
    )
    by_name = {o.name: o for o in response.outputs}
    return {
        "predict": _plain(by_name["predict"].as_numpy()),
        "predict_proba": by_name["predict_proba"].as_numpy().tolist(),
        "id": response.id,
        "model_name": response.model_name,
    }


async def infer_digits(
    client: InferenceRESTClient,
    base: str,
    headers: dict[str, str],
    pngs: list[bytes],
    *,
    binary: bool,
) -> dict[str, Any]:
    items = pngs if binary else [base64.b64encode(p) for p in pngs]
    tensor = InferInput("image", [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.asarray(items, dtype=np.object_), binary_data=binary)
    request = InferRequest(
        "digits",
        [tensor],
        request_outputs=[
            RequestedOutput("predict", {"binary_data": binary}),
            RequestedOutput("probabilities", {"binary_data": binary}),
        ],
    )
    response = await client.infer(base, request, model_name="digits", headers=dict(headers))
    by_name = {o.name: o for o in response.outputs}
    return {
        "predict": _plain(by_name["predict"].as_numpy()),
        "probabilities": by_name["probabilities"].as_numpy().tolist(),
    }


async def session(cfg: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=cfg["ca"])
    client = InferenceRESTClient(RESTConfig(protocol="v2", verify=context, timeout=60))
    base = cfg["base_url"]
    rows = np.asarray(cfg["rows"], dtype=np.float64)
    report: dict[str, Any] = {}
    for name, headers in cfg["credentials"].items():
        report[name] = {
            "live": await client.is_server_live(base, headers=headers),
            "ready": await client.is_server_ready(base, headers=headers),
            "model_ready": await client.is_model_ready(base, "iris", headers=headers),
            "json": await infer_iris(client, base, headers, rows, binary=False),
            "binary": await infer_iris(client, base, headers, rows, binary=True),
        }
    headers = cfg["credentials"]["api_key"]
    report["errors"] = {
        "401": await attempt(infer_iris(client, base, cfg["bad_key"], rows, binary=True)),
        "403": await attempt(infer_iris(client, base, cfg["unscoped"], rows, binary=True)),
        "404": await attempt(infer_iris(client, base, headers, rows, binary=True, model="nosuch")),
        "413": await attempt(
            infer_iris(client, base, headers, np.repeat(rows, 9, axis=0)[:9], binary=True)
        ),
        "422": await attempt(infer_iris(client, base, headers, np.zeros((1, 5)), binary=True)),
    }
    report["errors"]["429"] = [
        await attempt(infer_iris(client, base, cfg["limited"], rows, binary=False))
        for _ in range(cfg["limited_calls"])
    ]
    digits = cfg.get("digits")
    if digits:
        pngs = [base64.b64decode(p) for p in digits["pngs"]]
        report["digits"] = {
            mode: await infer_digits(
                client, digits["base_url"], digits["headers"], pngs, binary=mode == "binary"
            )
            for mode in ("json", "binary")
        }
    await client.close()
    return report


if __name__ == "__main__":
    json.dump(asyncio.run(session(json.load(sys.stdin))), sys.stdout, default=str)
