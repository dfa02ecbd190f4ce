"""Reading a job submission (multipart/form-data) as it streams in.

The model part (and the optional `inputs` part, an .npz of verification inputs) goes straight
to a temporary file inside the service's storage folder while its size is counted, so an
oversized upload is refused (413) before it is all received and nothing is ever spooled
elsewhere (Starlette's form parser would spool to the system temp dir). Client file names are
ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELDS = ("target", "trials", "input_shapes", "name", "refine")
MAX_FIELD_BYTES = 64 * 1024


FILES = ("model", "inputs")


def inputs_upload(upload: Path) -> Path:
    """Where the `inputs` part of the upload at `upload` (the model's path) is written."""
    return upload.with_suffix(".inputs.npz")


@dataclass
class Submission:
    model_path: Path | None = None
    model_bytes: int = 0
    model_sha256: str = ""
    filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    inputs_path: Path | None = None  # the `inputs` part: arrays to verify and time on
    inputs_sha256: str = ""

    def discard(self) -> None:
        for path in (self.model_path, self.inputs_path):
            if path is not None:
                path.unlink(missing_ok=True)


class _Reader:
    """python-multipart callbacks: one part at a time, files to disk, fields to memory."""

    def __init__(self, dest: Path, max_model_bytes: int) -> None:
        self.dest, self.max_model_bytes = dest, max_model_bytes
        self.result = Submission()
        self.digests = {name: hashlib.sha256() for name in FILES}
        self.sizes = dict.fromkeys(FILES, 0)
        self.fh = None
        self.headers: dict[bytes, bytes] = {}
        self.header_field = b""
        self.header_value = b""
        self.part: str | None = None
        self.value = bytearray()

    def callbacks(self) -> dict:
        return dict(on_part_begin=self.on_part_begin, on_header_field=self.on_header_field,
                    on_header_value=self.on_header_value, on_header_end=self.on_header_end,
                    on_headers_finished=self.on_headers_finished, on_part_data=self.on_part_data,
                    on_part_end=self.on_part_end)

    def on_part_begin(self) -> None:
        self.headers, self.part, self.value = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name in FILES:
            if getattr(self.result, f"{name}_path") is not None:
                raise HTTPException(422, f"the form has more than one `{name}` part")
            path = self.dest if name == "model" else inputs_upload(self.dest)
            if name == "model":
                self.result.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.fh = open(path, "wb")
            setattr(self.result, f"{name}_path", path)
        elif name in FIELDS:
            if name in self.result.fields:
                raise HTTPException(422, f"the form field `{name}` is given twice")
        else:
            raise HTTPException(422, f"unknown form field `{name[:64]}`: expected {', '.join(FILES)}, {', '.join(FIELDS)}")
        self.part = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part in FILES:
            self.sizes[self.part] += len(chunk)
            if self.sizes[self.part] > self.max_model_bytes:
                raise HTTPException(413, f"the {self.part} file is larger than this service's limit of "
                                         f"{self.max_model_bytes / 2**20:g} MiB")
            self.digests[self.part].update(chunk)
            self.fh.write(chunk)
        else:
            self.value += chunk
            if len(self.value) > MAX_FIELD_BYTES:
                raise HTTPException(413, f"the form field `{self.part}` is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.part in FILES:
            self.fh.close()
            self.fh = None
        elif self.part is not None:
            self.result.fields[self.part] = self.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


async def read_submission(content_type: str, content_length: str | None, body: AsyncIterator[bytes],
                          dest: Path, max_model_bytes: int) -> Submission:
    """Parse the form into `dest` (the model) and fields; on any error `dest` is removed."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise HTTPException(415, "send the job as multipart/form-data with a `model` file part")
    limit = len(FILES) * max_model_bytes + len(FIELDS) * MAX_FIELD_BYTES + 64 * 1024
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise HTTPException(413, f"the request ({int(content_length) / 2**20:.1f} MiB) is larger than this "
                                 f"service's limit of {max_model_bytes / 2**20:g} MiB for a model")
    reader = _Reader(dest, max_model_bytes)
    parser = MultipartParser(params[b"boundary"], reader.callbacks())
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        reader.close()
        reader.result.discard()
        raise HTTPException(422, f"malformed multipart body: {exc}") from None
    except BaseException:
        reader.close()
        reader.result.discard()
        raise
    reader.close()
    if reader.result.model_path is None:
        reader.result.discard()
        raise HTTPException(422, "the form has no `model` part (the .onnx file)")
    result = reader.result
    result.model_bytes = reader.sizes["model"]
    result.model_sha256 = reader.digests["model"].hexdigest()
    if result.inputs_path is not None:
        result.inputs_sha256 = reader.digests["inputs"].hexdigest()
    return result
