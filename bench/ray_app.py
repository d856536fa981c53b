"""The Ray Serve comparison: the benchmark's `echo` task as a Ray Serve deployment.

    POST /api/echo  {"args": {"x": 42, "label": "bench"}}  ->  {"x": 42, "label": "bench"}

Runs in bench/.venv-ray (bench/run.sh installs "ray[serve]" there). Starts a local Ray
instance, Serve's HTTP proxy on 127.0.0.1:--port and --replicas replicas, prints
`listening on http://127.0.0.1:PORT` once the deployment is ready, and shuts Ray down on
SIGTERM/SIGINT. Access logs are off (as for uvicorn).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--max-ongoing", type=int, default=64,
                    help="max_ongoing_requests per replica (Serve's default is 5)")
    ap.add_argument("--temp-dir", default=None, help="Ray's session/log directory")
    opts = ap.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request

    init_kwargs = dict(num_cpus=os.cpu_count(), include_dashboard=False,
                       logging_level="warning", log_to_driver=False)
    if opts.temp_dir:
        init_kwargs["_temp_dir"] = opts.temp_dir
    ray.init(**init_kwargs)
    logging_config = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": opts.port},
                logging_config=logging_config)

    @serve.deployment(num_replicas=opts.replicas, max_ongoing_requests=opts.max_ongoing,
                      ray_actor_options={"num_cpus": 0}, logging_config=logging_config)
    class Echo:
        async def __call__(self, request: Request) -> dict:
            body = await request.json()
            args = body["args"]
            return {"x": int(args["x"]), "label": str(args.get("label", ""))}

    serve.run(Echo.bind(), name="bench", route_prefix="/api/echo")
    # Installed after ray.init(): Ray's core replaces SIGTERM's handler with its own, which
    # would skip the shutdown below and leave Ray's agents behind.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening on http://127.0.0.1:{opts.port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
