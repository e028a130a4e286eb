"""The diffusers variant names of weight files that a model folder may hold (``zero123.loading.folder_layouts``).

Kept in a module that imports nothing, so that the command line's ``--weights-variant`` choices do not pull in
``zero123.loading`` (torch, diffusers, transformers) just to build the parser.
"""

#: the diffusers variant names of weight files that we read (``None``/"plain": the file without a variant)
WEIGHT_VARIANTS = ("ema", "fp16_ema", "fp16", "non_ema")
