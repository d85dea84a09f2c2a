"""ONNX export of TRAIL models, bundles with verified hashes, and the ONNX Runtime serving session."""
