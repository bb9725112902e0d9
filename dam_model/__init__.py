"""A native, faithful Describe Anything Model (DAM) with SAM 2 segmentation.

Depends on torch, transformers and sam2 only: no web, storage or Label Studio code here.
"""
