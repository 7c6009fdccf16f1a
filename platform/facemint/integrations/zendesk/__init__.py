"""The Zendesk avatar connector: a ticket arrives in a tenant's Zendesk, its signed webhook picks a branded avatar
by the tenant's rules, the swap runs as a metered job of the tenant's integration user (or comes from the cache of
earlier results), and the image goes back as the ticket's first reply. See docs/integrations.md."""
