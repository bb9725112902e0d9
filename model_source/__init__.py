"""Where the served model comes from when it is not a local folder: an ``s3://`` models root (`s3.S3Models`).

Neutral between its two readers, the backend's model store (hot swap) and the bulk pre-annotation job
(dam_preannotate): both import it, neither imports the other, so both resolve current.json, download a version
and name it the same way. It imports dam_model (the models-root layout, dam_model/versions.py) and ls_io (the S3
client), never backend, dam_loop, dam_tools or dam_preannotate (tests/test_layout.py).
"""
