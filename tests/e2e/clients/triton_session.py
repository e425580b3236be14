"""Triton's Python HTTP client (tritonclient[http]) against the gateway, used as its users
use it: TLS verified against our CA, credentials in headers, JSON and binary tensors."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def _plain(array: np.ndarray) -> list[Any]:
    return [x.decode() if isinstance(x, bytes) else x for x in array.reshape(-1).tolist()]


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    """What the call returned, or the error the client raised (its status and message)."""
    try:
        return {"value": call()}
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message(), "type": type(exc).__name__}


def infer_iris(
    client: triton.InferenceServerClient,
    headers: dict[str, str],
    rows: np.ndarray,
    *,
    binary: bool,
    model: str = "iris",
) -> dict[str, Any]:
    tensor = triton.InferInput("measurements", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("predict", binary_data=binary),
        triton.InferRequestedOutput("predict_proba", binary_data=binary),
    ]
    result = client.infer(model, [tensor], outputs=outputs, headers=headers, request_id="r-7")
    response = result.get_response()
    return {
        "predict": _plain(result.as_numpy("predict")),
        "predict_proba": result.as_numpy("predict_proba").tolist(),
        "id": response.get("id"),
        "outputs": response["outputs"],
    }


def session(cfg: dict[str, Any]) -> dict[str, Any]:
    client = triton.InferenceServerClient(
        cfg["host"], ssl=True, ssl_options={"ca_certs": cfg["ca"]}, network_timeout=30
    )
    rows = np.asarray(cfg["rows"], dtype=np.float64)
    report: dict[str, Any] = {}
    for name, headers in cfg["credentials"].items():
        done: dict[str, Any] = {
            "live": client.is_server_live(headers=headers),
            "ready": client.is_server_ready(headers=headers),
            "server": client.get_server_metadata(headers=headers),
            "model_ready": client.is_model_ready("iris", headers=headers),
            "model": client.get_model_metadata("iris", headers=headers),
            "json": infer_iris(client, headers, rows, binary=False),
            "binary": infer_iris(client, headers, rows, binary=True),
        }
        # No outputs named: the client asks for every output in binary (binary_data_output).
        tensor = triton.InferInput("measurements", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        default = client.infer("iris", [tensor], headers=headers)
        done["default"] = {
            "predict": _plain(default.as_numpy("predict")),
            "outputs": default.get_response()["outputs"],
        }
        report[name] = done
    headers = cfg["credentials"]["api_key"]
    report["errors"] = {
        "401": attempt(lambda: infer_iris(client, cfg["bad_key"], rows, binary=True)),
        "403": attempt(lambda: infer_iris(client, cfg["unscoped"], rows, binary=True)),
        "404": attempt(lambda: infer_iris(client, headers, rows, binary=True, model="nosuch")),
        "413": attempt(
            lambda: infer_iris(client, headers, np.repeat(rows, 9, axis=0)[:9], binary=True)
        ),
        "422": attempt(lambda: infer_iris(client, headers, np.zeros((1, 5)), binary=True)),
        "metadata_404": attempt(lambda: client.get_model_metadata("nosuch", headers=headers)),
    }
    limited = []
    for _ in range(cfg["limited_calls"]):
        limited.append(attempt(lambda: infer_iris(client, cfg["limited"], rows, binary=False)))
    report["errors"]["429"] = limited
    digits = cfg.get("digits")
    if digits:
        images = client_for(digits, cfg["ca"])
        pngs = [base64.b64decode(p) for p in digits["pngs"]]
        report["digits"] = {
            mode: infer_digits(images, digits["headers"], pngs, binary=mode == "binary")
            for mode in ("json", "binary")
        }
    client.close()
    return report


def client_for(target: dict[str, Any], ca: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        target["host"], ssl=True, ssl_options={"ca_certs": ca}, network_timeout=60
    )


def infer_digits(
    client: triton.InferenceServerClient,
    headers: dict[str, str],
    pngs: list[bytes],
    *,
    binary: bool,
) -> dict[str, Any]:
    # Images as BYTES elements: raw PNG bytes in binary, base64 text in JSON.
    items = pngs if binary else [base64.b64encode(p) for p in pngs]
    tensor = triton.InferInput("image", [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.asarray(items, dtype=np.object_), binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("predict", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("digits", [tensor], outputs=outputs, headers=headers)
    return {
        "predict": _plain(result.as_numpy("predict")),
        "probabilities": result.as_numpy("probabilities").tolist(),
    }


if __name__ == "__main__":
    json.dump(session(json.load(sys.stdin)), sys.stdout, default=str)
