"""Stage `smoke`: a served version answers, and a traffic window is generated through it.

A `cafe serve` process is started on 127.0.0.1 for a registered version and stopped by its PID; it must answer
an embedding query (text and image) and a caption request; then labelled images of a Karpathy-split set are
sent as users would (each image ingested, one of its captions searched for, the true image chosen as relevance
feedback), so that the traffic log holds one window for the monitor stage."""

from __future__ import annotations

import base64
import math
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cafe.evaluation.retrieval import load_karpathy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _post(url: str, body: dict) -> dict:
    r = httpx.post(url, json=body, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"POST {url}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json()


def _wait_ready(proc: subprocess.Popen, base: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`cafe serve` exited with {proc.returncode} before it was ready: "
                               f"{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"`cafe serve` was not ready after {timeout_s:.0f}s")


def _check_embedding(answer: dict, where: str) -> int:
    emb = answer.get("embedding") or []
    if not emb or not all(isinstance(v, float) and math.isfinite(v) for v in emb):
        raise RuntimeError(f"{where}: no finite embedding in the answer {str(answer)[:300]}")
    return len(emb)


def smoke(params_file: str, overrides: list[str], name: str, karpathy: str | Path, requests: int, log: str | Path,
          seed: int = 0, timeout_s: float = 600) -> dict:
    """Serve the registry's ``serve.ref`` version (``params_file`` + ``overrides``; its output into ``log``), check
    it, send ``requests`` labelled images and searches with feedback, stop it; returns what was checked and sent."""
    port = _free_port()
    cmd = [sys.executable, "-m", "cafe", "serve", "-p", params_file, "--host", "127.0.0.1", "--port", str(port),
           *(a for o in overrides for a in ("-s", o))]
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base, timeout_s, log)
        paths, captions, owner = load_karpathy(karpathy)
        text = captions[0]
        first = _post(f"{base}/v1/models/{name}:predict",
                      {"instances": [{"text": text}, {"image_b64": _b64(paths[0])}]})["predictions"]
        dim = _check_embedding(first[0], "text query")
        _check_embedding(first[1], "image query")
        caption = _post(f"{base}/v1/models/{name}-generate:predict",
                        {"instances": [{"image_b64": _b64(paths[0])}]})["predictions"][0]["text"]
        if not isinstance(caption, str) or not caption.strip():
            raise RuntimeError(f"the caption request gave no text: {caption!r}")

        rng = random.Random(seed)
        by_image: dict[int, list[str]] = {}
        for c, o in zip(captions, owner):
            by_image.setdefault(o, []).append(c)
        chosen = list(range(min(requests, len(paths))))
        feedback = 0
        for lo in range(0, len(chosen), 16):
            batch = chosen[lo:lo + 16]
            _post(f"{base}/v1/models/{name}:predict", {"instances": [{"image_b64": _b64(paths[i])} for i in batch]})
            answers = _post(f"{base}/v1/models/{name}:predict",
                            {"instances": [{"text": rng.choice(by_image[i])} for i in batch]})["predictions"]
            for i, answer in zip(batch, answers):
                _post(f"{base}/v1/feedback", {"request_id": answer["request_id"], "chosen": Path(paths[i]).name})
                feedback += 1
        version = first[0].get("model_version")
    finally:
        stop_server(proc)
    return {"version": version, "embedding_dim": dim, "caption": caption, "images": len(chosen),
            "searches": len(chosen), "feedback": feedback, "pid": proc.pid}


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s: a server this process started, stopped by its pid."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
