"""The migration path from the TF Object Detection API: ``pipeline.config`` parsing and import.

:mod:`.pbtxt` reads protobuf text format without a schema (no TensorFlow); :mod:`.importer` maps
a pipeline to a detkeeper config (``detkeeper config import``), with the model section in
:mod:`.mapping`, the training, input and evaluation sections in :mod:`.training` and the reasons
an unmapped field is left out in :mod:`.reasons`.
"""
