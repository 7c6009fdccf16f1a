"""Integrations with other products a tenant uses (Zendesk), each a subpackage of its own."""
