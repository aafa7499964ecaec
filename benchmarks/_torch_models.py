"""The benchmark models and local training in PyTorch (torch and Flower).

Same layers as `fedjax_ext.models` (no dropout): the EMNIST CNN
conv32-conv64-maxpool-dense128-dense62, logistic regression, and the MLP.
Inputs arrive channels-last like ours and are permuted once to NCHW.
"""

import torch
from torch import nn


def create_model(spec: dict) -> nn.Module:
  name, num_classes = spec['model'], spec['num_classes']
  if name == 'cnn':
    h, w, channels = spec['input_shape']
    flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(flat, 128), nn.ReLU(),
        nn.Linear(128, num_classes))
  features = 1
  for d in spec['input_shape']:
    features *= d
  if name == 'logistic':
    return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
  if name == 'mlp':
    layers, width = [nn.Flatten()], features
    for size in spec.get('hidden_sizes', (64,)):
      layers += [nn.Linear(width, size), nn.ReLU()]
      width = size
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
  raise ValueError(f'unknown model {name!r}')


def to_tensors(spec: dict, x, y):
  """NumPy [C, S, B, ...] data as torch tensors (NCHW for images)."""
  tx = torch.from_numpy(x)
  if spec['model'] == 'cnn':
    tx = tx.permute(0, 1, 2, 5, 3, 4).contiguous()
  return tx, torch.from_numpy(y).long()


def train_client(model: nn.Module, lr: float, bx, by) -> None:
  """Plain local SGD of one client over its batches bx [S, B, ...]."""
  opt = torch.optim.SGD(model.parameters(), lr=lr)
  loss_fn = nn.functional.cross_entropy
  for j in range(bx.shape[0]):
    opt.zero_grad(set_to_none=True)
    loss_fn(model(bx[j]), by[j]).backward()
    opt.step()
