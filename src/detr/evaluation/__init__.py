"""Evaluation: COCO bbox and mask AP with pycocotools, of a model on a loader or of a saved checkpoint;
panoptic quality (PQ / SQ / RQ) of COCO panoptic predictions."""
