"""The admin console: server-rendered pages under /admin for operators, finance and tenant admins. Its views call
the same services as /admin/v1 with the caller's own Principal, so the console can do nothing the API cannot."""
