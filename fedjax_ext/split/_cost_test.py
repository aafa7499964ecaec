"""Cost model: bytes from shapes, FLOPs from compiled programs, latency."""

from absl.testing import absltest
import numpy as np

from fedjax_ext import split
from fedjax_ext.split import _round_test

MLP = _round_test.MLP
PARAMS = _round_test.PARAMS


class CostTest(absltest.TestCase):

  def test_bytes_per_step(self):
    data = _round_test.cohort(4, 2, 4)
    model = split.split_model(MLP, 1)  # Activations [B, 5] float32.
    head = model.split_params(PARAMS)[0]
    psl = split.step_bytes(model, head, data.batches, client_side='backprop')
    self.assertEqual(psl['activation_upload'], 4 * 5 * 4)
    self.assertEqual(psl['gradient_download'], 4 * 5 * 4)
    self.assertEqual(psl['label_upload'], 4 * 4)
    # EPSL, phi = 0.5: 2 slots broadcast once to 4 clients, 2 unicast.
    epsl = split.step_bytes(model, head, data.batches, client_side='backprop',
                            phi=0.5)
    self.assertEqual(epsl['gradient_download'], (2 + 2 / 4) * 5 * 4)
    local = split.step_bytes(model, head, data.batches, client_side='local')
    self.assertEqual(local['gradient_download'], 0.)
    # Decoupled / SL activation-gradient traffic (spec 2.5 check 2): 1/2.
    self.assertEqual(
        local['activation_upload'] + local['gradient_download'],
        0.5 * (psl['activation_upload'] + psl['gradient_download']))

  def test_flops_from_compiled_programs_and_latency(self):
    data = _round_test.cohort(2, 3, 4)
    model = split.split_model(MLP, 1)
    psl = split.step_costs(model, PARAMS, data)
    epsl = split.step_costs(model, PARAMS, data, phi=1.)
    self.assertEqual(psl.num_clients, 2)
    self.assertEqual(psl.num_steps, 3)
    if not np.isnan(psl.server_flops):  # Some backends report none.
      self.assertGreater(psl.client_flops, 0.)
      self.assertGreater(psl.server_flops, 0.)
    self.assertLess(epsl.download_bytes, psl.download_bytes)
    costs = split.StepCosts(client_flops=100., server_flops=1000.,
                            upload_bytes=10., download_bytes=20.,
                            model_upload_bytes=0., model_download_bytes=5.,
                            num_clients=2, num_steps=3)
    profile = split.Profile(client_flops_per_s=(100., 50.),
                            uplink_bytes_per_s=10.,
                            downlink_bytes_per_s=(20., 10.),
                            server_flops_per_s=1000.)
    parallel = split.simulated_latency(costs, profile)
    # Slowest client: 100/50 + 10/10 + 20/10 = 5 s, server 1 s.
    self.assertAlmostEqual(parallel['step_latency_s'], 6.)
    self.assertAlmostEqual(parallel['round_latency_s'], 3 * 6. + 0.5)
    sequential = split.simulated_latency(costs, profile,
                                         schedule='sequential')
    # Client 1: 3 (1 + 1 + 1 + 0.5) + 0.25; client 2: 3 (2 + 1 + 2 + 0.5)
    # + 0.5.
    self.assertAlmostEqual(sequential['round_latency_s'], 10.75 + 17.)
    with self.assertRaisesRegex(ValueError, 'Profile.uplink_bytes_per_s'):
      split.simulated_latency(costs, profile._replace(
          uplink_bytes_per_s=(1., 2., 3.)))


if __name__ == '__main__':
  absltest.main()
