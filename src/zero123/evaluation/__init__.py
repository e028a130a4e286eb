"""Novel-view evaluation: metrics (``metrics``: PSNR, SSIM, LPIPS) and the runner (``runner``: pairs, baselines).

Import the submodules explicitly (``from zero123.evaluation.runner import evaluate``).
"""
