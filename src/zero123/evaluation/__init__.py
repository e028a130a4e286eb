"""Novel-view evaluation: metrics (``metrics``: PSNR, SSIM, LPIPS) and the runner (``runner``: pairs, baselines);
whole image-to-3D runs against ground-truth meshes (``eval3d``: ``zero123 eval-3d``); the field-fitting validation
tool (``mesh_reconstruction``: reconstruct analytic shapes from their renders, Chamfer distance and volume IoU).

Import the submodules explicitly (``from zero123.evaluation.runner import evaluate``).
"""
