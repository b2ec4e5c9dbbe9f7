"""Provisioning: one app's operations in order, with the journal and recovery (see provisioner.py)."""
