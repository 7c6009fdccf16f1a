from facemint.errors import Conflict, Forbidden, NotFound


class TenantNotFound(NotFound):
    code = "tenant_not_found"
    title = "Tenant not found"


class TenantExists(Conflict):
    code = "tenant_exists"
    title = "Tenant name taken"


class TenantSuspended(Forbidden):
    code = "tenant_suspended"
    title = "Tenant suspended"
