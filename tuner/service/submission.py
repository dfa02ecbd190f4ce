"""Checking a submitted job before it is queued: every problem is a 422 that names it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from fastapi import HTTPException
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from tuner.errors import TunerError
from tuner.load.model_io import LoadedModel, all_tensors, load_model, parse_input_shapes
from tuner.targets import parse_target


@dataclass(frozen=True)
class JobSpec:
    name: str
    target: dict[str, Any]
    trials: int
    input_shapes: dict[str, list[int]]
    refine: bool = False

    def request_sha256(self, model_sha256: str) -> str:
        """What makes two submissions the same request (for Idempotency-Key)."""
        payload = [model_sha256, self.name, self.target, self.trials, self.input_shapes, self.refine]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _name(given: str | None, filename: str) -> str:
    raw = given if given else Path(filename or "model").stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._")[:128]
    if given is not None and not cleaned:
        raise HTTPException(422, "`name` must contain letters or digits")
    return cleaned or "model"


def _input_shapes(text: str) -> dict[str, list[int]]:
    """A JSON object {"input": [1, 3, 224, 224]} or `tuner run`'s form: input=1,3,224,224 (';'-separated)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HTTPException(422, f"`input_shapes` is not valid JSON: {exc.msg}") from None
        if not isinstance(value, dict) or not all(
            isinstance(v, list) and v and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
            for v in value.values()
        ):
            raise HTTPException(422, '`input_shapes` must map input names to lists of positive ints, '
                                     'e.g. {"input": [1, 3, 224, 224]}')
        return {str(k): list(v) for k, v in value.items()}
    try:
        return {k: list(v) for k, v in parse_input_shapes([s for s in re.split(r"[;\s]+", text) if s]).items()}
    except TunerError as exc:
        raise HTTPException(422, f"`input_shapes`: {str(exc).replace('--input-shape', 'shape')}") from None


def job_spec(fields: dict[str, str], filename: str, max_trials: int) -> JobSpec:
    """The job's parameters from the form's text fields."""
    trials_text = fields.get("trials", "").strip()
    if not trials_text:
        raise HTTPException(422, "`trials` is required: the number of measured trials (0 = database only)")
    try:
        trials = int(trials_text)
    except ValueError:
        raise HTTPException(422, f"`trials` must be an integer, not {trials_text[:32]!r}") from None
    if not 0 <= trials <= max_trials:
        raise HTTPException(422, f"`trials` must be between 0 and {max_trials} (this service's limit per team)")
    try:
        target = parse_target(fields.get("target", "cpu") or "cpu")
    except TunerError as exc:
        raise HTTPException(422, str(exc)) from None
    refine = fields.get("refine", "false").strip().lower()
    if refine not in ("true", "false", "1", "0", ""):
        raise HTTPException(422, f"`refine` must be true or false, not {refine[:16]!r}")
    return JobSpec(name=_name(fields.get("name"), filename), target=target, trials=trials,
                   input_shapes=_input_shapes(fields.get("input_shapes", "")), refine=refine in ("true", "1"))


def check_model(path: Path, input_shapes: dict[str, list[int]]) -> LoadedModel:
    """The upload must be one self-contained ONNX model that passes the checks of `tuner run`;
    returns it as loaded."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        raise HTTPException(422, f"the upload is not an ONNX model ({type(exc).__name__})") from None
    external = [t for t in all_tensors(model) if uses_external_data(t)]
    if external:
        location = next((e.value for e in external[0].external_data if e.key == "location"), "")
        raise HTTPException(
            422, f"tensor {external[0].name!r} refers to external data ({location!r}): external data "
                 "is refused; upload one self-contained .onnx file")
    try:
        return load_model(str(path), {k: tuple(v) for k, v in input_shapes.items()})
    except TunerError as exc:
        # Messages name the file: the client knows it as "the model", not by the server's path.
        raise HTTPException(422, str(exc).replace(str(path), "the model").replace("--input-shape", "input_shapes")) from None


def check_inputs(inputs: Path, model: LoadedModel) -> None:
    """The `inputs` part must hold one array per model input, with the model's shapes and dtypes
    (`model`: what `check_model` loaded)."""
    from tuner.verify.inputs import load_inputs

    try:
        load_inputs(inputs, model)
    except TunerError as exc:
        raise HTTPException(422, str(exc).replace(f"--inputs {inputs}", "`inputs`")) from None
