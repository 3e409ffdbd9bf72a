"""`transferlab serve`: many adapted tasks answered over HTTP from one shared backbone.

`tasks.py` loads the backbone once and every task's peft adapter and head into it; `batching.py`
groups concurrent requests per task into one forward pass; `app.py` is the FastAPI application.
"""
