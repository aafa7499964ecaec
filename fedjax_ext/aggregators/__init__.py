"""Aggregators: stacked client updates [C, ...] -> one update."""

from fedjax_ext.aggregators._mean import weighted_mean
