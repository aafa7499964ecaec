"""Bad arguments to `fedjax_ext.models`: one error naming the argument each."""

from absl.testing import absltest

from fedjax_ext._src import test_utils
from fedjax_ext import models

BAD_CALLS = (
    ('unknown_model', lambda: models.create_model('vit', num_classes=10),
     'Unknown model'),
    ('num_classes_zero', lambda: models.create_model('mlp', num_classes=0),
     'num_classes must be >= 1'),
    ('num_classes_float',
     lambda: models.create_model('logistic', num_classes=2.5),
     'num_classes must be an integer'),
    ('hidden_sizes_empty',
     lambda: models.create_model('mlp', num_classes=10, hidden_sizes=()),
     'hidden_sizes must be a non-empty list'),
    ('hidden_sizes_zero',
     lambda: models.create_model('mlp', num_classes=10, hidden_sizes=(0,)),
     'hidden_sizes must be'),
    ('hidden_sizes_int',
     lambda: models.create_model('mlp', num_classes=10, hidden_sizes=32),
     'hidden_sizes must be'),
    ('unknown_attribute',
     lambda: models.create_model('cnn', num_classes=10, hidden_sizes=(8,)),
     'unknown argument(s) hidden_sizes'),
    ('dropout_one',
     lambda: models.create_model('cnn', num_classes=10, dropout_rate=1.),
     'dropout_rate must be'),
    ('lstm_sizes_empty',
     lambda: models.create_model('char_lstm', num_classes=10, lstm_sizes=[]),
     'lstm_sizes must be'),
    ('embed_size_zero',
     lambda: models.create_model('word_lstm', num_classes=10, embed_size=0),
     'embed_size must be >= 1'),
    ('stage_sizes_negative',
     lambda: models.create_model('resnet', num_classes=10,
                                 stage_sizes=(2, -1)), 'stage_sizes must be'),
    ('groups_do_not_divide_filters',
     lambda: models.create_model('resnet', num_classes=10, num_filters=6,
                                 num_groups=4), 'num_groups'),
)


ValidationTest = test_utils.bad_calls_test_case(BAD_CALLS)


if __name__ == '__main__':
  absltest.main()
