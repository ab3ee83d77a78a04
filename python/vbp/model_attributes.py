"""The attributes vbp keeps on the models it handles (plain instance attributes, so they survive deepcopy and
travel with the model; `save_pruned` writes what they hold as JSON). Every such name is defined here."""

PRUNING = "_vbp_pruning"  # how a model was pruned: {"criterion": dict, "compensation": dict, "ratio": ...}
SITE_SPEC = "_vbp_site_spec"  # the user's site specs, as JSON-able dicts (`vbp.families.spec`)
PYTHON_SOURCE = "_vbp_python_source"  # {"model": "py:MODULE:FUNCTION", "kwargs": {...}} of a py: model
TORCHVISION_SOURCE = "_vbp_torchvision_source"  # {"model": "tv:NAME", "kwargs": {...}} of a torchvision model
INPUT_SHAPE = "_vbp_input_shape"  # a py: model's input shape without the batch dimension, e.g. (3, 224, 224)
GGUF_SOURCE = "_vbp_gguf_source"  # "gguf:/abs/FILE.gguf": the GGUF file a gguf: model was dequantized from
