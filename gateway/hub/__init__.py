"""The hub: one SCIM target for many apps (docs/hub.md).

The IdP provisions users and groups once into the hub's directory (`/hub/scim/v2`); assignment rules in the
hub file say which apps each belongs in; a delivery worker per app brings each app to the hub's state through
that app's ordinary provisioner.
"""
