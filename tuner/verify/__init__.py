"""Step 5 of a run: the compiled module checked against a reference (ONNX Runtime, else a newer
opset, else ONNX's evaluator: `reference`) on the user's or random inputs (`inputs`), timed beside
ONNX Runtime (`measure`), and the records behind a failed verification found (`blame`)."""
