"""`drdc export`: a trained run as a deployment folder.

folder (what the folder holds and its manifest), graphs (the ONNX / TorchScript graphs), check (runs the folder as a
user would, against `drdc predict`) and infer.py (the standalone program copied into the folder, numpy + onnxruntime
only)."""
