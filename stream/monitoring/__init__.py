"""Drift, data quality and live performance: subjects, monitors, alerts."""
