"""Recurring credit grants: "N tokens every day, week or month, expiring at the period's end", for every user of
every tenant on a plan (issued by the platform) or for a tenant's users, optionally those carrying a label (issued
by the platform or paid from the tenant's pool). The workers grant each period once per account (`issuing`)."""
