"""Benchmark worker: a hand-written PyTorch FedAvg loop (CPU wheel).

Per round: for each client, load the global weights into one model, run
plain SGD over its batches, and add its example-weighted delta to a running
sum; then the server step ``w <- w - server_lr * mean delta``. Eager
PyTorch on its oneDNN kernels, the baseline a researcher writes by hand.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(spec):
  import torch  # pylint: disable=g-import-not-at-top
  import _torch_models  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  x, y = _common.synthetic_data(spec)
  tx, ty = _torch_models.to_tensors(spec, x, y)
  del x, y
  c, s, b = ty.shape
  weight = float(s * b)
  lr, server_lr = spec['lr'], spec.get('server_lr', 1.)
  model = _torch_models.create_model(spec)
  global_w = [p.detach().clone() for p in model.parameters()]

  def run_round(r):
    del r
    totals = [torch.zeros_like(w) for w in global_w]
    for i in range(c):
      with torch.no_grad():
        for p, w in zip(model.parameters(), global_w):
          p.copy_(w)
      _torch_models.train_client(model, lr, tx[i], ty[i])
      with torch.no_grad():
        for t, p, w in zip(totals, model.parameters(), global_w):
          t.add_(w - p, alpha=weight)
    with torch.no_grad():
      for w, t in zip(global_w, totals):
        w.sub_(t, alpha=server_lr / (weight * c))

  timing = _common.time_rounds(run_round, spec, first_includes_compile=True)
  finite = all(bool(torch.isfinite(w).all()) for w in global_w)
  return dict(timing, finite=finite, torch_version=torch.__version__,
              torch_threads=torch.get_num_threads(),
              cuda_build=torch.version.cuda)


if __name__ == '__main__':
  _common.run_worker(main)
