#!/bin/bash
# The ranking in this session's order: the reference and the single-step
# frontier with 3 seeds first, then every other method (seed 0) and the
# seeds of whatever is near the front.
cd /work/bench_src
export PYTHONPATH=/work/bench_src
python tools/benchmark.py --setting=ranking --clock=cpu --out=/work/bench/ranking \
  --methods=pgd_at,fgsm_rs,n_fgsm,grad_align,fgsm_pgi,standard --seeds=0,1,2 --front_seeds=0 || exit 1
python tools/benchmark.py --setting=ranking --clock=cpu --out=/work/bench/ranking
