"""The reference architecture's stack as a `make bench` peer: Flask on gunicorn.

Serves the same scikit-learn iris pipeline as our scorer at the same v1 path, the plain
Flask way (sync view, ``request.get_json``, ``jsonify``). Runs in the bench's side
virtualenv; the pipeline comes as a joblib file that bench/peers.py writes from the
scorer's own artifact, loaded only after its SHA-256 matches.

    BENCH_MODEL_PATH=... BENCH_MODEL_SHA256=... gunicorn -w 2 -b 127.0.0.1:PORT flask_app:app
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from flask import Flask, Response, abort, jsonify, request


def _load_model() -> Any:
    data = Path(os.environ["BENCH_MODEL_PATH"]).read_bytes()
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), os.environ["BENCH_MODEL_SHA256"]):
        raise RuntimeError("model artifact digest mismatch: refusing to unpickle it")
    return joblib.load(io.BytesIO(data))


model = _load_model()
app = Flask(__name__)


@app.get("/health")
def health() -> Response:
    return jsonify({"ok": True})


@app.post("/v1/models/iris:predict")
def predict() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        abort(422)
    batch = np.asarray(body["instances"], dtype=np.float64)
    if batch.ndim != 2 or batch.shape[1] != 4:
        abort(422)
    return jsonify({"predictions": model.predict(batch).tolist()})
