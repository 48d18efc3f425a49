"""Ray around the single-process library: multi-seed Ray Train runs, Ray Tune searches and Ray Data scoring.

Modules: ``cluster`` (connecting to Ray, storage for Ray's own state), ``train_seeds`` (one Ray Train run per
seed), ``tune`` (Optuna + ASHA search), ``score`` (batch scoring with an actor pool). The same code runs on an
in-process Ray and on a cluster named by ``RAY_ADDRESS``.
"""
