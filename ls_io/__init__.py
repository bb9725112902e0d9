"""Label Studio I/O: the Label Studio format, once, for the server (backend/) and the nightly loop.

- errors: error types with an HTTP status and a one-line reason;
- label_config: what a label config asks for (by tag type);
- regions: region types, labels, captions, percent geometry -> pixels, masks;
- tasks: a task's regions and their masks (the backend's /predict and the bulk pre-annotation job read them alike);
- tracks: a video track frame by frame (Label Studio's own keyframe interpolation);
- rle: the brush RLE codec; results: result items for predictions;
- exports: the export objects of Label Studio's target storage, read back as annotations with their task;
- media: fetching task media safely; video_io: the one PyAV layer; s3: the S3 client factory and secret redaction.

Neutral on purpose: imports neither the server, the loop nor the model package (tests/test_layout.py checks it).
"""
