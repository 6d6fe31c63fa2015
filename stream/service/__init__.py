"""The worker as a service: Faust app and agents, config, metrics, CLI, resilience."""
