"""`transferlab serve`: many adapted tasks answered over HTTP from one shared backbone.

`tasks.py` loads the backbone once and every task's peft adapter and head into it (torch); `onnx_tasks.py` runs
one exported ONNX graph per task instead (onnxruntime, no torch); `batching.py` groups concurrent requests per
task into one call; `app.py` is the FastAPI application over either.
"""
