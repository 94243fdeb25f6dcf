"""A local Cloud Storage endpoint for tests: ``gcp-storage-emulator`` with the object generations that
tensorstore's ``gcs`` driver relies on (an ``x-goog-generation`` header on every read, and the
``ifGenerationMatch`` / ``ifGenerationNotMatch`` preconditions it uses for its conditional reads and writes),
which the emulator leaves out."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from http import HTTPStatus

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

# What each client library reads to find the endpoint; tensorstore also skips its credential lookup.
_CLIENT_ENV = {"STORAGE_EMULATOR_HOST": "{url}", "TENSORSTORE_GCS_HTTP_URL": "{url}",
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "unused", "GOOGLE_CLOUD_PROJECT": "test"}


def _generation(storage, request) -> str:
    """The object's current generation, "0" when it does not exist (GCS's convention)."""
    try:
        return storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])["generation"]
    except NotFound:
        return "0"


def _query(request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _download_with_generation(original):
    def download(request, response, storage, *args, **kwargs):
        generation = _generation(storage, request)
        if (want := _query(request, "ifGenerationMatch")) is not None and want != generation:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return
        if _query(request, "ifGenerationNotMatch") == generation != "0":
            response.status = HTTPStatus.NOT_MODIFIED
        else:
            original(request, response, storage, *args, **kwargs)
        if generation != "0":
            response["x-goog-generation"] = generation
    return download


def _insert_if_generation_matches(original):
    def insert(request, response, storage, *args, **kwargs):
        want = _query(request, "ifGenerationMatch")
        name = _query(request, "name")
        if want is not None and name is not None:
            try:
                current = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
            except NotFound:
                current = "0"
            if want != current:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return original(request, response, storage, *args, **kwargs)
    return insert


def _swap(handlers, replacements: dict) -> None:
    """Replace handler functions in the emulator's routing table (it holds the functions themselves)."""
    for _, by_method in handlers:
        for method, handler in by_method.items():
            by_method[method] = replacements.get(handler, handler)


@contextlib.contextmanager
def fake_gcs(monkeypatch, bucket: str) -> Iterator[str]:
    """Serve one empty ``bucket`` on a free local port and point every GCS client of this process at it;
    yields the endpoint URL."""
    replacements = {objects.download: _download_with_generation(objects.download),
                    objects.insert: _insert_if_generation_matches(objects.insert)}
    monkeypatch.setattr(objects, "download", replacements[objects.download])  # objects.get calls it (alt=media)
    _swap(emulator.HANDLERS, replacements)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # each 404 probe is logged as an error
    url = f"http://127.0.0.1:{port}"
    for name, value in _CLIENT_ENV.items():
        monkeypatch.setenv(name, value.format(url=url))
    try:
        yield url
    finally:
        server.stop()
        _swap(emulator.HANDLERS, {new: old for old, new in replacements.items()})
