"""Facemint: the token-metered face-swap API service (HTTP, auth, tenancy, CLI)."""
