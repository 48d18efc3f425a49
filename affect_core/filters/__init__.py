"""Differentiable Bayesian filter layers: Kalman filter and extended Kalman filter over (B, T, m) observations."""

from affect_core.filters.base import BayesFilter, FilterOutput, kinematic_transition
from affect_core.filters.extended_kalman import ExtendedKalmanFilter
from affect_core.filters.kalman import KalmanFilter

__all__ = ["BayesFilter", "ExtendedKalmanFilter", "FilterOutput", "KalmanFilter", "kinematic_transition"]
