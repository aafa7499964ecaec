"""Bad arguments to `fedjax_ext.server`: one error naming the argument each."""

import math

from absl.testing import absltest

from fedjax_ext._src import test_utils
from fedjax_ext import server

BAD_CALLS = (
    ('unknown_name', lambda: server.server_optimizer('sgd', 1.),
     'Unknown server optimizer'),
    ('lr_nan', lambda: server.server_optimizer('fedavg', math.nan),
     'learning_rate must be a finite number > 0'),
    ('lr_negative', lambda: server.server_optimizer('fedadam', -1.),
     'learning_rate must be a finite number > 0'),
    ('lr_inf', lambda: server.server_optimizer('fedavgm', math.inf),
     'learning_rate must be a finite number > 0'),
    ('lr_string', lambda: server.server_optimizer('fedavg', '1'),
     'learning_rate must be'),
    ('momentum_one', lambda: server.server_optimizer('fedavgm', 1.,
                                                     momentum=1.),
     'momentum must be a finite number in [0, 1)'),
    ('momentum_negative', lambda: server.server_optimizer(
        'fedavgm', 1., momentum=-0.1), 'momentum must be'),
    ('tau_zero', lambda: server.server_optimizer('fedadam', 1., tau=0.),
     'tau must be a finite number > 0'),
    ('tau_nan', lambda: server.server_optimizer('fedyogi', 1., tau=math.nan),
     'tau must be'),
    ('b1_one', lambda: server.server_optimizer('fedadam', 1., b1=1.),
     'b1 must be a finite number in [0, 1)'),
    ('b2_negative', lambda: server.server_optimizer('fedadam', 1., b2=-1.),
     'b2 must be'),
    ('fedopt_variant', lambda: server.scale_by_fedopt('rmsprop'),
     'Unknown variant'),
    ('fedopt_tau', lambda: server.scale_by_fedopt('adam', tau=-1.),
     'tau must be'),
)


ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
