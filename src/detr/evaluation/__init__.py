"""Evaluation: COCO bbox AP with pycocotools, of a model on a loader or of a saved checkpoint."""
