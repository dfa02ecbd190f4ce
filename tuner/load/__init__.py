"""Step 1 of a run: the user's ONNX model loaded, checked and normalized before TVM sees it
(`model_io`), the zoo models the onnx package ships (`zoo`, `zoo_info`)."""
