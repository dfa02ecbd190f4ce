"""The client of `tuner serve` behind `tuner submit`: upload, follow the events, download, check."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from ..errors import TunerError


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail or response.text[:200] or response.reason_phrase)


class Client:
    def __init__(self, server: str, key: str, timeout_s: float = 60.0) -> None:
        if not key:
            raise TunerError("no API key: pass --key or set TUNER_API_KEY (`tuner keys create --team NAME` makes one)")
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {key}"},
                                 timeout=httpx.Timeout(timeout_s, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TunerError(f"cannot reach {self.server}: {exc}") from None
        if response.status_code >= 400:
            retry = response.headers.get("Retry-After")
            hint = f" (retry after {retry} s)" if retry else ""
            raise TunerError(f"{self.server} answered {response.status_code}: {_detail(response)}{hint}")
        return response

    def submit(self, model: Path, target: str, trials: int, input_shapes: str = "", name: str | None = None,
               idempotency_key: str | None = None, refine: bool = False) -> dict[str, Any]:
        if not model.is_file():
            raise TunerError(f"model file not found: {model}")
        data = {"target": target, "trials": str(trials), "refine": "true" if refine else "false"}
        if input_shapes:
            data["input_shapes"] = input_shapes
        if name:
            data["name"] = name
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with open(model, "rb") as fh:
            return self._call("POST", "/v1/jobs", data=data, headers=headers,
                              files={"model": (model.name, fh, "application/octet-stream")}).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str, retries: int = 5) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, job) pairs from the server-sent events until the job ends; reconnects on drops."""
        failures = 0
        while True:
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(60.0, read=None)) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise TunerError(f"{self.server} answered {resp.status_code}: {_detail(resp)}")
                    event = "message"
                    for line in resp.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            job = json.loads(line[5:])
                            yield event, job
                            if event == "end":
                                return
                        failures = 0
            except httpx.HTTPError as exc:
                failures += 1
                if failures > retries:
                    raise TunerError(f"lost the event stream of job {job_id}: {exc}") from None
                time.sleep(min(2 ** failures, 30))

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        for event, job in self.events(job_id):
            on_progress(job)
            if event == "end":
                return job
        return self.job(job_id)

    def download(self, job: dict[str, Any], out_dir: Path) -> Path:
        """The module, written only after its sha256 matched both the header and the report."""
        out_dir.mkdir(parents=True, exist_ok=True)
        resp = self._call("GET", f"/v1/jobs/{job['id']}/artifact")
        data = resp.content
        actual = hashlib.sha256(data).hexdigest()
        header = resp.headers.get("X-Artifact-SHA256")
        expected = job["report"]["artifact"]["sha256"]
        if actual != header or actual != expected:
            raise TunerError(f"the downloaded module's sha256 {actual[:16]}... does not match the server's "
                             f"({(header or '-')[:16]}..., report {expected[:16]}...): nothing written")
        path = out_dir / "model.so"
        tmp = path.with_name(".model.so.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        (out_dir / "report.json").write_text(json.dumps(job["report"], indent=2))
        return path
