"""Budgets: campaign spend and status, pause signals, and the checks that guard them."""
