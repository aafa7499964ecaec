"""Benchmark worker: Flower's simulation engine with the same PyTorch model.

`flwr.simulation.run_simulation` (the Ray backend, its default resources of
one CPU per client actor, so two clients train at once on two cores) with a
`ServerApp` running Flower's own ``FedAvg`` strategy (fraction_fit chosen
so exactly ``clients`` clients train each round, no evaluation) and a
`ClientApp` whose NumPyClient runs the plain local SGD of
`_torch_models.train_client`. Round times are taken on the server from
``configure_fit`` (round start) to the end of ``aggregate_fit``.

Each client's data (the same shapes as every other system) is drawn inside
the actor that trains it, once per actor and client, so no data crosses
Ray's object store; the parameters do, as in any Flower run.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

_CLIENT_DATA = {}


def _client_data(spec, cid):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import _torch_models  # pylint: disable=g-import-not-at-top
  if cid not in _CLIENT_DATA:
    rng = np.random.default_rng([spec.get('seed', 0), cid])
    s, b = spec['steps'], spec['batch']
    x = rng.standard_normal((1, s, b, *spec['input_shape']), dtype=np.float32)
    y = rng.integers(0, spec['num_classes'], size=(1, s, b), dtype=np.int32)
    tx, ty = _torch_models.to_tensors(spec, x, y)
    _CLIENT_DATA[cid] = (tx[0], ty[0])
  return _CLIENT_DATA[cid]


def main(spec):
  import flwr  # pylint: disable=g-import-not-at-top
  from flwr.client import ClientApp, NumPyClient  # pylint: disable=g-import-not-at-top
  from flwr.common import Context, ndarrays_to_parameters  # pylint: disable=g-import-not-at-top
  from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # pylint: disable=g-import-not-at-top
  from flwr.server.strategy import FedAvg  # pylint: disable=g-import-not-at-top
  from flwr.simulation import run_simulation  # pylint: disable=g-import-not-at-top
  import ray  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import _torch_models  # pylint: disable=g-import-not-at-top

  c = spec['clients']
  lr = spec['lr']
  warmup, repeats = max(1, spec.get('warmup', 2)), max(1, spec['repeats'])
  num_rounds = warmup + repeats
  torch.manual_seed(0)
  init_model = _torch_models.create_model(spec)
  init_weights = [p.detach().numpy().copy()
                  for p in init_model.state_dict().values()]

  class Client(NumPyClient):

    def __init__(self, cid):
      self.cid = cid
      self.model = _torch_models.create_model(spec)

    def get_parameters(self, config):
      del config
      return [v.detach().numpy() for v in self.model.state_dict().values()]

    def fit(self, parameters, config):
      del config
      keys = list(self.model.state_dict().keys())
      self.model.load_state_dict(
          {k: torch.from_numpy(v.copy()) for k, v in zip(keys, parameters)})
      bx, by = _client_data(spec, self.cid)
      _torch_models.train_client(self.model, lr, bx, by)
      return self.get_parameters({}), int(by.numel()), {}

  def client_fn(context: Context):
    cid = int(context.node_config['partition-id'])
    return Client(cid).to_client()

  marks = []

  class TimedFedAvg(FedAvg):

    def configure_fit(self, server_round, parameters, client_manager):
      marks.append(('start', server_round, time.perf_counter()))
      return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
      out = super().aggregate_fit(server_round, results, failures)
      marks.append(('end', server_round, time.perf_counter(), len(results),
                    len(failures)))
      return out

  def server_fn(context: Context):
    del context
    strategy = TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=c,
        min_evaluate_clients=0, min_available_clients=c,
        initial_parameters=ndarrays_to_parameters(init_weights))
    return ServerAppComponents(strategy=strategy,
                               config=ServerConfig(num_rounds=num_rounds))

  backend_config = {'client_resources': {'num_cpus': 1, 'num_gpus': 0.0},
                    'init_args': {'include_dashboard': False,
                                  'log_to_driver': False}}
  t0 = time.perf_counter()
  run_simulation(server_app=ServerApp(server_fn=server_fn),
                 client_app=ClientApp(client_fn=client_fn),
                 num_supernodes=c, backend_config=backend_config)
  total = time.perf_counter() - t0
  starts = {m[1]: m[2] for m in marks if m[0] == 'start'}
  ends = {m[1]: m for m in marks if m[0] == 'end'}
  if len(ends) < num_rounds:
    raise RuntimeError(f'Flower finished {len(ends)} of {num_rounds} rounds')
  failures = sum(m[4] for m in ends.values())
  trained = [m[3] for m in ends.values()]
  if failures or min(trained) != c:
    raise RuntimeError(f'Flower rounds had {failures} client failures; '
                       f'clients trained per round: {trained}')
  durations = [ends[r][2] - starts[r] for r in sorted(ends)]
  timed = durations[warmup:]
  import statistics  # pylint: disable=g-import-not-at-top
  return {
      'first_round_s': durations[0],
      'round_times_s': timed,
      'median_s': statistics.median(timed),
      'rounds_run': len(durations),
      'startup_s': starts[1] - t0,
      'total_s': total,
      'finite': True,
      'flwr_version': flwr.__version__,
      'ray_version': ray.__version__,
      'torch_version': torch.__version__,
  }


if __name__ == '__main__':
  _common.run_worker(main)
