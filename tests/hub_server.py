"""A loopback HTTP server in the Hugging Face Hub's URL layout, for the real huggingface_hub client (no network here).

What it serves, as huggingface.co does (huggingface_hub's file_download.py / hf_api.py read these):
- `GET /api/models/{repo}/revision/{rev}[?blobs=true]`: the repo listing, `sha` plus `siblings` with size, blobId
  and, for LFS files, `lfs.sha256/size`.
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: small files directly, with `X-Repo-Commit`, `ETag` (the git blob id) and
  `Content-Length`; LFS files as a 302 to `<cdn>/cdn/<sha256>` with `X-Linked-Size` and `X-Linked-Etag` (the
  sha256). The CDN is a second port (another origin, as cdn-lfs.hf.co is), so the client stops at the redirect and
  takes the size and etag from it, as it does on the real hub.
- `GET /cdn/<sha256>` on the CDN port: the bytes, with `Range` support (206 + Content-Range), so a resume is a real
  Range request.

Faults, set per file: `drop_after(path, n)` makes the next GET of that file send `n` bytes and then close the
connection (with `then_down=True` the hub then goes away: 503 to everything until `outage(False)`);
`serve_short(path, n)` serves only the first `n` bytes of that file as if they were all of it (a broken mirror).
Every request is logged with the byte it started at (`requests`).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".pth", ".pkl", ".pt", ".safetensors", ".bin")
# huggingface_hub writes what it received in 10 MiB chunks (constants.DOWNLOAD_CHUNK_SIZE): a transfer cut at
# 15 MiB leaves 10 MiB on disk, so the fake UNet is big enough for a resume from a real, non-zero offset.
UNET_BYTES = 24 * 2**20
DROP_AT = 15 * 2**20


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    path: str
    data: bytes

    @property
    def is_lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:  # git's blob id, what the hub sends as the ETag of a small file
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()  # noqa: S324 - git's own id


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    range_start: int | None
    status: int


def fake_repos(seed: int = 0, unet_bytes: int = UNET_BYTES) -> list[HubFile]:
    """The three repos with small random contents, plus files the download must leave alone (the SVD UNet
    weights, fp16 twins, pytorch_model.bin beside model.safetensors, the TorchScript face detector)."""
    rng = np.random.default_rng(seed)

    def blob(n: int) -> bytes:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    def text(name: str) -> bytes:
        return json.dumps({"name": name, "seed": seed}).encode()

    sonic = "LeonJoe13/Sonic"
    whisper = "openai/whisper-tiny"
    svd = "stabilityai/stable-video-diffusion-img2vid-xt"
    return [
        HubFile(sonic, "Sonic/unet.pth", blob(unet_bytes)),
        HubFile(sonic, "Sonic/audio2token.pth", blob(70_000)),
        HubFile(sonic, "Sonic/audio2bucket.pth", blob(30_000)),
        HubFile(sonic, "RIFE/flownet.pkl", blob(20_000)),
        HubFile(sonic, "yoloface_v5m.pt", blob(25_000)),
        HubFile(sonic, "README.md", b"# Sonic\n"),
        HubFile(whisper, "config.json", text("whisper config")),
        HubFile(whisper, "preprocessor_config.json", text("whisper preprocessor")),
        HubFile(whisper, "model.safetensors", blob(40_000)),
        HubFile(whisper, "pytorch_model.bin", blob(40_000)),
        HubFile(svd, "model_index.json", text("svd index")),
        HubFile(svd, "unet/config.json", text("unet config")),
        HubFile(svd, "unet/diffusion_pytorch_model.safetensors", blob(90_000)),
        HubFile(svd, "vae/config.json", text("vae config")),
        HubFile(svd, "vae/diffusion_pytorch_model.safetensors", blob(50_000)),
        HubFile(svd, "vae/diffusion_pytorch_model.fp16.safetensors", blob(25_000)),
        HubFile(svd, "image_encoder/config.json", text("clip config")),
        HubFile(svd, "image_encoder/model.fp16.safetensors", blob(45_000)),
        HubFile(svd, "scheduler/scheduler_config.json", text("scheduler")),
        HubFile(svd, "feature_extractor/preprocessor_config.json", text("clip preprocessor")),
    ]


class HubServer:
    """The fake hub on 127.0.0.1 (a free port); use as a context manager or call `stop()`."""

    def __init__(self, files: list[HubFile]) -> None:
        self.files = {(f.repo_id, f.path): f for f in files}
        self.by_sha = {f.sha256: f for f in files if f.is_lfs}
        self.requests: list[Logged] = []
        self._drops: dict[str, tuple[int, bool]] = {}
        self._outage = False
        self._short: dict[str, int] = {}
        self._lock = threading.Lock()
        handler = _handler_for(self)
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in ("hub", "cdn")]
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self._servers]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def drop_after(self, path: str, n_bytes: int, then_down: bool = False) -> None:
        with self._lock:
            self._drops[path] = (n_bytes, then_down)

    def serve_short(self, path: str, n_bytes: int) -> None:
        with self._lock:
            self._short[path] = n_bytes

    def short_length(self, path: str) -> int | None:
        with self._lock:
            return self._short.get(path)

    def outage(self, on: bool) -> None:
        with self._lock:
            self._outage = on

    def gets_of(self, path: str) -> list[Logged]:
        """The byte GETs of one file (the CDN requests of an LFS file, the resolve GETs of a small one)."""
        wanted = [f"/cdn/{f.sha256}" if f.is_lfs else f"/{f.repo_id}/resolve/{COMMIT}/{f.path}"
                  for f in self.files.values() if f.path == path]
        return [r for r in self.requests if r.method == "GET" and r.path in wanted]

    def stop(self) -> None:
        for server, thread in zip(self._servers, self._threads):
            server.shutdown()
            server.server_close()
            thread.join(5)

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, entry: Logged) -> None:
        with self._lock:
            self.requests.append(entry)

    def take_drop(self, path: str) -> int | None:
        """The byte count to cut this GET at (once), going down afterwards if asked."""
        with self._lock:
            n_bytes, then_down = self._drops.pop(path, (None, False))
            self._outage = self._outage or then_down
            return n_bytes

    @property
    def down(self) -> bool:
        with self._lock:
            return self._outage


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
LISTING = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: the tests read `hub.requests`
            return

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

        def _send(self, status: int, headers: dict[str, str], payload: bytes = b"", start: int | None = None,
                  body: bool = True) -> None:
            hub.log(Logged(self.command, self.path.split("?")[0], start, status))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _answer(self, body: bool) -> None:
            path = self.path.split("?")[0]
            if hub.down:
                self._send(503, {"Content-Type": "text/plain"}, b"hub is down", body=body)
                return
            if (listing := LISTING.match(path)) is not None:
                self._listing(listing["repo"], body)
            elif (resolve := RESOLVE.match(path)) is not None:
                self._resolve(resolve["repo"], resolve["path"], body)
            elif path.startswith("/cdn/") and path[5:] in hub.by_sha:
                self._bytes(hub.by_sha[path[5:]], {}, body)
            else:
                self._send(404, {"X-Error-Code": "EntryNotFound"}, b"not found", body=body)

        def _listing(self, repo: str, body: bool) -> None:
            files = [f for (r, _), f in hub.files.items() if r == repo]
            if not files:
                self._send(404, {"X-Error-Code": "RepoNotFound"}, b"repo not found", body=body)
                return
            siblings = [{"rfilename": f.path, "size": len(f.data), "blobId": f.blob_id,
                         **({"lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}}
                            if f.is_lfs else {})} for f in files]
            payload = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}).encode()
            self._send(200, {"Content-Type": "application/json"}, payload, body=body)

        def _resolve(self, repo: str, path: str, body: bool) -> None:
            f = hub.files.get((repo, path))
            if f is None:
                self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"entry not found",
                           body=body)
                return
            common = {"X-Repo-Commit": COMMIT}
            if f.is_lfs:  # the hub redirects LFS files to its CDN, naming the real size and sha256
                self._send(302, {**common, "Location": f"{hub.cdn_url}/cdn/{f.sha256}",
                                 "X-Linked-Size": str(len(f.data)), "X-Linked-Etag": f'"{f.sha256}"',
                                 "ETag": f'"{f.blob_id}"'}, body=body)
                return
            self._bytes(f, {**common, "ETag": f'"{f.blob_id}"'}, body)

        def _bytes(self, f: HubFile, headers: dict[str, str], body: bool) -> None:
            size, start, end = len(f.data), 0, len(f.data) - 1
            requested = RANGE.match(self.headers.get("Range", ""))
            status = 200
            if requested is not None:
                start = int(requested[1])
                end = int(requested[2]) if requested[2] else size - 1
                if start >= size:
                    self._send(416, {"Content-Range": f"bytes */{size}"}, body=body)
                    return
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
            payload = f.data[start:end + 1]
            if (short := hub.short_length(f.path)) is not None:
                payload = payload[:short]
            headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            drop = hub.take_drop(f.path) if body and self.command == "GET" else None
            if drop is None:
                self._send(status, headers, payload, start, body)
                return
            # Promise the whole body, send `drop` bytes, hang up: the client sees a truncated transfer.
            hub.log(Logged(self.command, self.path.split("?")[0], start, status))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    return Handler


def partial_files(dest: Path) -> list[Path]:
    """The partial files a failed download left for a resume (never in the layout itself)."""
    from sonic_guard.models.download import PARTIAL_FOLDER

    return sorted((dest / PARTIAL_FOLDER).rglob("*.incomplete"))


def check_download_resume(drop_at: int = DROP_AT) -> bool:
    """An interrupted download continues where it stopped, in a second run.

    The hub cuts the UNet's transfer after `drop_at` bytes and then goes down (503), so the first run fails with
    the received bytes kept; the second run, hub back, must ask for `Range: bytes=<kept>-` with kept > 0 and end
    with the exact bytes. True only if all of that holds (`download_resume_ok` in bench/results/native_models.json).
    """
    from sonic_guard.models.download import DownloadError, download

    files = fake_repos()
    unet = next(f for f in files if f.path == "Sonic/unet.pth")
    with HubServer(files) as hub, tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "sonic"
        hub.drop_after(unet.path, drop_at, then_down=True)
        try:
            download(dest, ["sonic"], endpoint=hub.url)
            return False  # the interruption did not interrupt
        except DownloadError:
            pass
        kept = sum(p.stat().st_size for p in partial_files(dest))
        if kept == 0 or (dest / unet.path).exists():
            return False
        hub.outage(False)
        first_run = len(hub.gets_of(unet.path))
        download(dest, ["sonic"], endpoint=hub.url)
        second_run = [r.range_start for r in hub.gets_of(unet.path)[first_run:]]
        return second_run == [kept] and (dest / unet.path).read_bytes() == unet.data and not partial_files(dest)
