"""Federated algorithms composed from clients, aggregators and servers."""

from fedjax_ext.algorithms._by_name import ALGORITHMS
from fedjax_ext.algorithms._by_name import create_algorithm
from fedjax_ext.algorithms._by_name import DEFAULT_SERVER_LEARNING_RATES
from fedjax_ext.algorithms._by_name import DEFAULT_TAU
from fedjax_ext.algorithms._fed_avg import fed_avg
from fedjax_ext.algorithms._scaffold import scaffold
