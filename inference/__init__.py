"""The swap engine (insightface on ONNX Runtime). Never imports the service or billing."""
