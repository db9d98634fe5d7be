"""A small HTTP inference service around any vit-deploy artifact, standard library only.

    python examples/python/http_service.py artifacts/b16-384-fp16 --port 8080
    curl --data-binary @cat.jpg http://127.0.0.1:8080/predict      # -> top-5 JSON

The runner is opened once and shared by the server's threads (vit-deploy runners are thread
safe); each request is decoded and preprocessed exactly as the artifact's manifest says. For
serving at scale use Triton (`vit-deploy triton-repo`), which batches requests dynamically.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from vit_deploy import runtime
from vit_deploy.errors import VitDeployError
from vit_deploy.images.decode import decode_rgb, preprocess
from vit_deploy.predict import class_names, softmax

MAX_BODY = 20 << 20  # refuse uploads above 20 MB instead of reading them into memory


def make_handler(runner: runtime.Runner, top_k: int = 5) -> type[BaseHTTPRequestHandler]:
    names = class_names(runner.num_classes)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
            if self.path != "/predict":
                return self._reply(404, {"error": "POST an image to /predict"})
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self._reply(413 if length else 400, {"error": f"send one image of 1 byte to {MAX_BODY} bytes"})
            try:
                image = preprocess(decode_rgb(self.rfile.read(length)), runner.preprocessing)
            except VitDeployError as e:  # not an image, corrupt: the client's fault, a clear 400
                return self._reply(400, {"error": str(e)})
            probs = softmax(runner.infer(image[None]).astype(np.float64))[0]
            top = np.argsort(-probs)[:top_k]
            self._reply(200, {"top": [{"class": int(i), "label": names[i], "probability": float(probs[i])}
                                      for i in top]})

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                return self._reply(200, {"status": "ready", **runner.describe()})
            self._reply(404, {"error": "GET /health, or POST an image to /predict"})

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # keep stderr for errors
            pass

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", help="an artifact folder (engine, ONNX graph)")
    ap.add_argument("--backend", default=None, help="tensorrt, onnxruntime, openvino or pytorch")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    with runtime.open(args.artifact, args.backend) as runner:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(runner))
        print(f"serving {args.artifact} ({runner.backend}) on http://{args.host}:{server.server_port}/predict")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


if __name__ == "__main__":
    main()
