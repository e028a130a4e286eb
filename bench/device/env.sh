# Sourced by the device scripts: put the project (and, where the device image lacks them, the wheels carried in
# .whl/ for diffusers, trimesh, PyMCubes, xatlas, fast-simplification) on PYTHONPATH. Run from the repo root.
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on the lent multi-GPU hosts (device README); harmless on one GPU
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ! python3 -c "import diffusers, trimesh" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}  # keep /tmp/site when sourced a second time
fi
