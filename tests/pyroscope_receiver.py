"""A loopback stand-in for a Pyroscope server, for tests and benchmarks.

It accepts what pyroscope-io pushes (`POST /push.v1.PusherService/Push`: gzip protobuf `PushRequest` holding
raw pprof profiles; and the legacy `POST /ingest?name=...`), decodes both layers and keeps what it saw. No
Pyroscope server can be installed offline, so this is how the tests check what really goes over the wire.

The protobuf messages are declared here in Python (descriptor_pb2 + message_factory) from the public schemas
(grafana/pyroscope `push.v1`/`types.v1`, google/pprof `profile.proto`); nothing is generated at build time.

Modes: "normal" answers 200, "refuse" answers 500, "silent" reads the request and never answers.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PUSH_PATH = "/push.v1.PusherService/Push"
MODES = ("normal", "refuse", "silent")

_F = descriptor_pb2.FieldDescriptorProto

# (message, [(field name, number, type, label, type_name)])
_SCHEMA: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    (
        "LabelPair",
        [
            ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("value", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "RawSample",
        [
            ("raw_profile", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
            ("ID", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "RawProfileSeries",
        [
            ("labels", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.LabelPair"),
            ("samples", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.RawSample"),
        ],
    ),
    ("PushRequest", [("series", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.RawProfileSeries")]),
    # pprof (github.com/google/pprof/proto/profile.proto): only the fields the tests read.
    (
        "ValueType",
        [
            ("type", 1, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("unit", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "Label",
        [
            ("key", 1, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("str", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("num", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("num_unit", 4, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "Sample",
        [
            ("location_id", 1, _F.TYPE_UINT64, _F.LABEL_REPEATED, ""),
            ("value", 2, _F.TYPE_INT64, _F.LABEL_REPEATED, ""),
            ("label", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.Label"),
        ],
    ),
    (
        "Line",
        [
            ("function_id", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("line", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "Location",
        [
            ("id", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("mapping_id", 2, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("address", 3, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("line", 4, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.Line"),
        ],
    ),
    (
        "Function",
        [
            ("id", 1, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("name", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("system_name", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("filename", 4, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "Profile",
        [
            ("sample_type", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.ValueType"),
            ("sample", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.Sample"),
            ("location", 4, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.Location"),
            ("function", 5, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".rx.Function"),
            ("string_table", 6, _F.TYPE_STRING, _F.LABEL_REPEATED, ""),
            ("time_nanos", 9, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("duration_nanos", 10, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("period_type", 11, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".rx.ValueType"),
            ("period", 12, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
        ],
    ),
]


def build_message_classes() -> dict[str, Any]:
    """Message classes for PushRequest and pprof Profile, from a private descriptor pool."""
    file_proto = descriptor_pb2.FileDescriptorProto(name="sonic_guard_rx.proto", package="rx", syntax="proto3")
    for name, fields in _SCHEMA:
        message = file_proto.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            added = message.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:  # an empty type_name still counts as set, which the pool refuses for scalars
                added.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"rx.{name}")) for name, _ in _SCHEMA}


@dataclass
class ReceivedProfile:
    """One pprof profile as received: its series labels and, per sample, its labels and first value."""

    path: str
    series_labels: dict[str, str]
    sample_labels: list[dict[str, str]]
    sample_values: list[int]
    strings: list[str]
    sample_stacks: list[list[str]] = field(default_factory=list)  # function names, leaf first


@dataclass
class ReceiverLog:
    requests: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[ReceivedProfile] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _maybe_gunzip(body: bytes) -> bytes:
    return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body


def decode_pprof(raw: bytes, classes: dict[str, Any], path: str, series: dict[str, str]) -> ReceivedProfile:
    profile = classes["Profile"]()
    profile.ParseFromString(_maybe_gunzip(raw))
    strings = list(profile.string_table)
    labels = [{strings[lab.key]: strings[lab.str] for lab in s.label} for s in profile.sample]
    values = [int(s.value[0]) if len(s.value) else 0 for s in profile.sample]
    function_names = {f.id: strings[f.name] for f in profile.function}
    location_names = {
        loc.id: [function_names.get(line.function_id, "?") for line in loc.line] for loc in profile.location
    }
    stacks = [[name for lid in s.location_id for name in location_names.get(lid, [])] for s in profile.sample]
    return ReceivedProfile(path, series, labels, values, strings, stacks)


def _legacy_series(query: dict[str, list[str]]) -> dict[str, str]:
    """`name=app{k=v,...}` of the 0.8.x ingest API, as a label dict."""
    name = query.get("name", [""])[0]
    app, _, rest = name.partition("{")
    labels = {"service_name": app}
    for pair in rest.rstrip("}").split(","):
        if "=" in pair:
            key, value = pair.split("=", 1)
            labels[key] = value
    return labels


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep the test output quiet
        return

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        owner = self.server.owner
        if owner.mode == "silent":
            owner.note_request(self.path, dict(self.headers), len(body))
            owner.silent_release.wait()  # hold the connection open without answering
            return
        owner.note_request(self.path, dict(self.headers), len(body))
        if owner.mode == "refuse":
            self.send_response(500)
            self.end_headers()
            return
        try:
            owner.decode(self.path, self.headers.get("Content-Encoding", ""), body)
        except Exception as exc:  # noqa: BLE001 - a test server records what it could not decode
            owner.log.errors.append(f"{self.path}: {type(exc).__name__}: {exc}")
        self.send_response(200)
        self.send_header("Content-Type", "application/proto")
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: PyroscopeReceiver


class PyroscopeReceiver:
    """Threaded loopback server. Use as a context manager; `address` is what to give pyroscope-io."""

    def __init__(self, mode: str = "normal") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.log = ReceiverLog()
        self.silent_release = threading.Event()
        self._classes = build_message_classes()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="pyroscope-receiver", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> PyroscopeReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.silent_release.set()
        self._server.shutdown()
        self._server.server_close()

    def note_request(self, path: str, headers: dict[str, str], size: int) -> None:
        with self._lock:
            self.log.requests.append({"path": path, "headers": headers, "size": size})

    def decode(self, path: str, encoding: str, body: bytes) -> None:
        parsed = urllib.parse.urlsplit(path)
        if encoding == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        found: list[ReceivedProfile] = []
        if parsed.path == PUSH_PATH:
            request = self._classes["PushRequest"]()
            request.ParseFromString(body)
            for series in request.series:
                labels = {pair.name: pair.value for pair in series.labels}
                found.extend(decode_pprof(s.raw_profile, self._classes, parsed.path, labels) for s in series.samples)
        elif parsed.path == "/ingest":
            labels = _legacy_series(urllib.parse.parse_qs(parsed.query))
            found.append(decode_pprof(_multipart_profile(body), self._classes, parsed.path, labels))
        else:
            raise ValueError(f"unexpected path {parsed.path}")
        with self._lock:
            self.log.profiles.extend(found)

    # Convenience views for assertions.
    def profiles(self) -> list[ReceivedProfile]:
        with self._lock:
            return list(self.log.profiles)

    def series_labels(self) -> list[dict[str, str]]:
        return [p.series_labels for p in self.profiles()]

    def samples_in(self, function_name: str) -> list[tuple[dict[str, str], int]]:
        """(labels, value) for every sample whose stack contains `function_name`."""
        return [
            (lab, val)
            for p in self.profiles()
            for lab, val, stack in zip(p.sample_labels, p.sample_values, p.sample_stacks)
            if any(function_name in frame for frame in stack)
        ]

    def tagged_samples(self) -> list[tuple[dict[str, str], int]]:
        """(labels, value) for every sample that carries at least one label."""
        return [(lab, val) for p in self.profiles() for lab, val in zip(p.sample_labels, p.sample_values) if lab]


def _multipart_profile(body: bytes) -> bytes:
    """The `profile` part of a legacy multipart upload, or the body itself when it is not multipart."""
    if not body.startswith(b"--"):
        return body
    boundary = body.split(b"\r\n", 1)[0]
    for part in body.split(boundary):
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="profile"' in head:
            return content[:-2] if content.endswith(b"\r\n") else content
    return b""


def free_port_refused() -> str:
    """An address on loopback where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def serve_until_stdin_closes(mode: str) -> None:
    """For a separate process (benchmarks): print the address, serve until stdin closes, print a summary."""
    import json
    import sys

    with PyroscopeReceiver(mode) as receiver:
        print(receiver.address, flush=True)
        sys.stdin.read()
        summary = {
            "requests": len(receiver.log.requests),
            "profiles": len(receiver.profiles()),
            "tagged_samples": len(receiver.tagged_samples()),
            "errors": receiver.log.errors,
        }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    import sys

    serve_until_stdin_closes(sys.argv[1] if len(sys.argv) > 1 else "normal")
