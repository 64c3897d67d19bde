"""Taxi fare meters: tariffs and the fare formula, rules (distance, CUSUM, fares, seals), rollout, evaluation."""
